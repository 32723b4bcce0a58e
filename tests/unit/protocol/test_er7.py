"""ER7 reader/writer: parsing rules, path access, writes, escapes, header peek."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocol.er7 import (
    Encoding,
    Er7Error,
    Message,
    Path,
    PathError,
    escape,
    parse_path,
    peek_header,
    unescape,
)
from tests.unit.protocol.samples import SAMPLE_FILES, sample_text

S12 = sample_text("siu_s12_new_patient.hl7")
ESC = sample_text("siu_s12_escapes.hl7")
SMALL = "MSH|^~\\&|EPIC|MAIN_HOSP\rPID|1||A1^^^H^MR~B2^^^P^PI||Doe^Jane\rNTE|1||one\rNTE|2||two\r"


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text",
    [
        SMALL,
        SMALL.replace("\r", "\n"),
        SMALL.replace("\r", "\r\n"),
        SMALL.replace("\r", "\n", 1).replace("NTE|1", "\r\nNTE|1"),
        "\n\r\n" + SMALL.replace("\r", "\r\n\r\n") + "\n  \n",
        SMALL.rstrip("\r"),
    ],
    ids=["cr", "lf", "crlf", "mixed", "blank-lines", "no-trailing"],
)
def test_parse_accepts_any_segment_terminator(text: str) -> None:
    msg = Message.parse(text)
    assert msg.segment_names() == ["MSH", "PID", "NTE", "NTE"]
    assert msg.to_er7() == SMALL
    assert msg.get("NTE[2]-3") == "two"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_samples_round_trip_byte_identical(path: pathlib.Path) -> None:
    text = sample_text(path.name)
    msg = Message.parse(text)
    if "\n" in text:
        assert msg.to_er7("\n") == text
        assert msg.to_er7() == text.replace("\n", "\r")
    else:
        assert msg.to_er7() == text
    assert msg.segment_names()[:2] == ["MSH", "SCH"]


def test_parse_splits_fields_only_when_asked() -> None:
    msg = Message.parse(S12)
    assert all(f is None for f in msg._fields)
    msg.get("PID-3.1")
    split = [name for name, f in zip(msg._names, msg._fields, strict=True) if f is not None]
    assert split == ["PID"]


@pytest.mark.parametrize(
    ("text", "code", "location"),
    [
        ("PID|1\r", 100, "MSH^1"),
        ("", 100, "MSH^1"),
        ("MSH\r", 102, "MSH^1^1"),
        ("MSHA^~\\&|x\r", 102, "MSH^1^1"),
        ("MSH|^~\\|x\r", 102, "MSH^1^2"),
        ("MSH|^~\\^|x\r", 102, "MSH^1^2"),
        ("MSH|^~\\&!$|x\r", 102, "MSH^1^2"),
        ("MSH|^~\\&|x\rPID-1\r", 100, ""),
        ("MSH|^~\\&|x\rcontinued text|1\r", 100, ""),
    ],
)
def test_parse_rejects_malformed(text: str, code: int, location: str) -> None:
    with pytest.raises(Er7Error) as info:
        Message.parse(text)
    assert (info.value.code, info.value.location) == (code, location)


def test_error_texts_do_not_quote_content() -> None:
    with pytest.raises(Er7Error) as info:
        Message.parse("MSH|^~\\&|x\rQuillfeather|Rowan\r")
    assert "Quill" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "enc"),
    [
        ("MSH#*~\\&#EPIC#H\rPID#1##A1*B*C~X1", Encoding("#", "*", "~", "\\", "&")),
        ("MSH|^~\\&#|EPIC|H\rPID|1||A1^B^C~X1", Encoding("|", "^", "~", "\\", "&", "#")),
        ("MSH|^~!&|EPIC|H\rPID|1||A1^B^C~X1", Encoding("|", "^", "~", "!", "&")),
    ],
)
def test_custom_encoding_characters(text: str, enc: Encoding) -> None:
    msg = Message.parse(text)
    assert msg.encoding == enc
    assert msg.get("MSH-1") == enc.field
    assert msg.get("MSH-2") == enc.msh2
    assert msg.get("MSH-3") == "EPIC"
    assert msg.get("PID-3.2") == "B"
    assert msg.get("PID-3[2]") == "X1"
    msg.set("PID-5.2", f"a{enc.field}b{enc.component}c")
    assert msg.get("PID-5.2") == f"a{enc.field}b{enc.component}c"
    assert Message.parse(msg.to_er7()).get("PID-5.2") == f"a{enc.field}b{enc.component}c"


# ------------------------------------------------------------------------------ reading


def test_numbering_follows_hl7() -> None:
    msg = Message.parse(S12)
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "EPIC"
    assert msg.get("MSH-9.2") == "S12"
    assert msg.get("MSH-10") == "MSG00001"
    assert msg.get("PID-3") == "MRN100001^^^MAIN_HOSP^MR"
    assert msg.get("PID-3.1") == "MRN100001"
    assert msg.get("SCH-11.4") == "202503171000"
    assert msg.get("AIP-3.2") == "Rivera"


@pytest.mark.parametrize(
    "path",
    ["ZZZ-1", "PID-99", "PID-2", "PID-3[3]", "PID-3.9", "PID-3.1.2", "NTE[3]-3", "MSH-1.2",
     "MSH-2[2]", "PID-5.1.9"],
)
def test_absent_is_empty(path: str) -> None:
    assert Message.parse(SMALL).get(path) == ""


def test_leaf_is_decoded_and_composite_is_raw() -> None:
    msg = Message.parse(ESC)
    assert msg.get("NTE-3") == "Bring forms A|B^C&D\\E~F\nSecond line"
    assert msg.get("PID-5") == "Vexlington^Sage^^^^^L"
    assert msg.get("PID-11.1") == "3 Imaginary Blvd&Unit 4"
    assert msg.get("PID-11") == "3 Imaginary Blvd\\T\\Unit 4^^Lakeview^IL^62702^USA^H"
    assert msg.get("AIP-3.9") == "LOCAL&2.25.4711&ISO"
    assert msg.get("AIP-3.9.2") == "2.25.4711"
    assert msg.get("AIP-3.2.1") == "Fernsby"
    assert msg.get("PID-3") == "MRN100007^^^MAIN_HOSP^MR"
    assert msg.get("PID-3[2].1") == "ALT5507"
    assert msg.get("NTE") == "NTE|1||Bring forms A\\F\\B\\S\\C\\T\\D\\E\\E\\R\\F\\.br\\Second line"


def test_segment_index_and_paths_objects() -> None:
    msg = Message.parse(SMALL)
    assert msg.get("NTE-3") == "one"
    assert msg.get(Path("NTE", 2, 3)) == "two"
    assert msg.segment_count("NTE") == 2
    assert msg.segment_count("AIP") == 0


def test_get_all_occurrences() -> None:
    msg = Message.parse(ESC)
    assert msg.get_all("PID-3.1") == ["MRN100007", "ALT5507"]
    assert msg.get_all("PID-3[2].4") == ["PARTNER"]
    assert msg.get_all("PID-3") == ["MRN100007^^^MAIN_HOSP^MR", "ALT5507^^^PARTNER^PI"]
    assert msg.get_all("PID-13.4") == ["sage.vexlington@example.org"]  # empty one skipped
    assert msg.get_all("ZZZ-1") == []
    small = Message.parse(SMALL)
    assert small.get_all("NTE-3") == ["one", "two"]
    assert small.get_all("NTE[2]-1") == ["2"]
    assert small.get_all("NTE") == ["NTE|1||one", "NTE|2||two"]
    assert small.get_all("MSH-1") == ["|"]


# ------------------------------------------------------------------------------ writing


def test_set_escapes_and_get_returns_value() -> None:
    msg = Message.parse(S12)
    value = "A|B^C~D&E\\F\rG\nH"
    msg.set("NTE-3", value)
    assert msg.get("NTE-3") == value
    again = Message.parse(msg.to_er7())
    assert again.get("NTE-3") == value
    assert again.segment_names() == msg.segment_names()
    assert "NTE|1||A\\F\\B\\S\\C\\R\\D\\T\\E\\E\\F\\X0D\\G\\.br\\H\r" in msg.to_er7()


def test_set_field_replaces_all_repetitions() -> None:
    msg = Message.parse(SMALL)
    msg.set("PID-3", "Z9")
    assert msg.get_all("PID-3") == ["Z9"]


def test_set_component_touches_only_first_repetition() -> None:
    msg = Message.parse(SMALL)
    msg.set("PID-3.4", "NEWH")
    assert msg.get("PID-3") == "A1^^^NEWH^MR"
    assert msg.get("PID-3[2]") == "B2^^^P^PI"


def test_set_pads_fields_repetitions_components_subcomponents() -> None:
    msg = Message.parse("MSH|^~\\&|A\rPID|1\r")
    msg.set("PID-5[3].2.3", "x")
    assert msg.to_er7() == "MSH|^~\\&|A\rPID|1||||~~^&&x\r"
    assert msg.get("PID-5[3].2.3") == "x"
    msg.set("MSH-7", "20250101")
    assert msg.to_er7().startswith("MSH|^~\\&|A||||20250101\r")


def test_set_appends_missing_segment_and_keeps_others_verbatim() -> None:
    msg = Message.parse(S12)
    msg.set("ZCL[2]-1", "extra")
    out = msg.to_er7()
    assert out.startswith(S12)
    assert out[len(S12) :] == "ZCL\rZCL|extra\r"
    assert msg.get("ZCL[2]-1") == "extra"


@pytest.mark.parametrize("path", ["MSH-1", "MSH-2", "MSH-2.1", "NTE", "MSH[2]-3"])
def test_set_refuses_separators_and_whole_segments(path: str) -> None:
    with pytest.raises(PathError):
        Message.parse(SMALL).set(path, "x")


def test_untouched_segments_stay_byte_identical_after_writes() -> None:
    msg = Message.parse(ESC)
    msg.set("MSH-5", "CLINIC_EHR")
    msg.get("NTE-3")
    before = ESC.split("\r")
    after = msg.to_er7().split("\r")
    assert after[1:] == before[1:]
    assert after[0] == before[0].replace("|ENGINE|", "|CLINIC_EHR|")


def test_map_all_changes_and_counts() -> None:
    msg = Message.parse(ESC)
    seen: list[str] = []

    def upper(value: str) -> str | None:
        seen.append(value)
        return value.lower() if value.startswith("ALT") else None

    assert msg.map_all("PID-3.1", upper) == 1
    assert seen == ["MRN100007", "ALT5507"]
    assert msg.get_all("PID-3.1") == ["MRN100007", "alt5507"]
    assert msg.map_all("PID-3.1", lambda v: v.lower()) == 1  # the other one is lower already
    assert msg.map_all("PID-3.1", lambda v: v + "-X") == 2
    assert msg.get_all("PID-3.1") == ["mrn100007-X", "alt5507-X"]
    assert msg.get("PID-3[2]") == "alt5507-X^^^PARTNER^PI"


def test_map_all_visits_empty_occurrences_of_existing_segments() -> None:
    msg = Message.parse(SMALL)
    seen: list[str] = []

    def default(value: str) -> str:
        seen.append(value)
        return value or "default"

    assert msg.map_all("NTE-2", default) == 2
    assert seen == ["", ""]
    assert msg.get_all("NTE-2") == ["default", "default"]
    assert msg.map_all("ZZZ-1", lambda v: "never") == 0
    assert "ZZZ" not in msg.segment_names()


def test_map_all_unchanged_value_writes_nothing() -> None:
    msg = Message.parse(ESC)
    assert msg.map_all("PID-5", lambda v: v) == 0
    assert msg.map_all("NTE-3", lambda v: v) == 0
    assert msg.to_er7() == ESC


def test_remove_segments() -> None:
    msg = Message.parse(SMALL)
    msg.remove("NTE[2]")
    assert msg.get_all("NTE-3") == ["one"]
    msg = Message.parse(SMALL)
    msg.remove("NTE")
    assert msg.segment_names() == ["MSH", "PID"]
    assert msg.to_er7() == "MSH|^~\\&|EPIC|MAIN_HOSP\rPID|1||A1^^^H^MR~B2^^^P^PI||Doe^Jane\r"
    with pytest.raises(PathError):
        msg.remove("MSH")


def test_remove_field_and_component_keeps_positions() -> None:
    msg = Message.parse(SMALL)
    msg.remove("PID-3.4")
    assert msg.get("PID-3") == "A1^^^^MR"
    assert msg.get("PID-3[2]") == "B2^^^^PI"
    msg.remove("PID-3")
    msg.remove("NTE-3")
    msg.remove("PID-9.2")  # absent: nothing padded
    assert msg.to_er7() == "MSH|^~\\&|EPIC|MAIN_HOSP\rPID|1||||Doe^Jane\rNTE|1||\rNTE|2||\r"


def test_copy_is_independent() -> None:
    msg = Message.parse(SMALL)
    msg.get("PID-5")
    dup = msg.copy()
    dup.set("PID-5.1", "Other")
    dup.remove("NTE")
    assert msg.get("PID-5.1") == "Doe"
    assert msg.to_er7() == SMALL
    assert dup.get("PID-5") == "Other^Jane"


# ------------------------------------------------------------------------------ escapes


@pytest.mark.parametrize(
    ("er7", "plain"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("line\\.br\\next", "line\nnext"),
        ("\\X0D0A\\", "\r\n"),
        ("caf\\XC3A9\\", "café"),
        ("caf\\XE9\\", "café"),  # not UTF-8: read as latin-1
        ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # unknown: kept
        ("\\XZZ\\", "\\XZZ\\"),  # malformed hex: kept
        ("trailing\\", "trailing\\"),
        ("a\\\\b", "a\\\\b"),
        ("\\P\\", "\\P\\"),  # no truncation character defined
    ],
)
def test_unescape(er7: str, plain: str) -> None:
    assert unescape(er7, Encoding()) == plain


def test_truncation_escape() -> None:
    enc = Encoding(truncation="#")
    assert escape("a#b", enc) == "a\\P\\b"
    assert unescape("a\\P\\b", enc) == "a#b"
    assert escape("a#b", Encoding()) == "a#b"


def test_escape() -> None:
    assert escape("a|b^c&d~e\\f\rg\nh", Encoding()) == (
        "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\.br\\h"
    )
    assert escape("plain", Encoding()) == "plain"


PUNCT = "|^~\\&#!$%*+/:;=?@_"


@st.composite
def encodings(draw: st.DrawFn) -> Encoding:
    chars = draw(st.permutations(PUNCT))
    truncation = chars[5] if draw(st.booleans()) else None
    return Encoding(chars[0], chars[1], chars[2], chars[3], chars[4], truncation)


@settings(derandomize=True, database=None, max_examples=500)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(PUNCT + "\r\nX"),
       enc=encodings())
def test_unescape_inverts_escape(text: str, enc: Encoding) -> None:
    escaped = escape(text, enc)
    assert unescape(escaped, enc) == text
    for sep in (enc.field, enc.component, enc.repetition, enc.subcomponent, "\r", "\n"):
        assert sep not in escaped


# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("text", "path", "location"),
    [
        ("SCH-7.1", Path("SCH", None, 7, None, 1, None), "SCH^1^7^1^1"),
        ("PID-3[2].1", Path("PID", None, 3, 2, 1, None), "PID^1^3^2^1"),
        ("AIP-3.2", Path("AIP", None, 3, None, 2, None), "AIP^1^3^1^2"),
        ("AIP[2]-3.1", Path("AIP", 2, 3, None, 1, None), "AIP^2^3^1^1"),
        ("MSH-9.2", Path("MSH", None, 9, None, 2, None), "MSH^1^9^1^2"),
        ("PID-5.1.1", Path("PID", None, 5, None, 1, 1), "PID^1^5^1^1^1"),
        ("NTE", Path("NTE", None, 0, None, None, None), "NTE^1"),
        ("SCH-25", Path("SCH", None, 25, None, None, None), "SCH^1^25"),
        ("PID-3[2]", Path("PID", None, 3, 2, None, None), "PID^1^3^2"),
        ("Z01-1", Path("Z01", None, 1, None, None, None), "Z01^1^1"),
    ],
)
def test_parse_path(text: str, path: Path, location: str) -> None:
    assert parse_path(text) == path
    assert str(path) == text
    assert path.location() == location


def test_location_uses_occurrence_when_path_has_no_index() -> None:
    assert parse_path("AIP-3.1").location(3) == "AIP^3^3^1^1"
    assert parse_path("AIP[2]-3.1").location(3) == "AIP^2^3^1^1"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("PID-x", "expected a field number after '-' in 'PID-x'"),
        ("pid-3", "expected a segment name"),
        ("PI", "expected a segment name"),
        ("PID3", "expected '-' and a field number after 'PID'"),
        ("PID-0", "expected a field number after '-'"),
        ("PID-3.", "expected a component number after '.'"),
        ("PID-3.1.", "expected a subcomponent number after '.'"),
        ("PID-3.1.1.1", "unexpected '.1' at the end"),
        ("PID[0]-3", "segment index"),
        ("PID-3[2", "expected ']' after the repetition"),
        ("PID-3 ", "unexpected ' '"),
        ("PID-\u0663", "expected a field number"),
    ],
)
def test_parse_path_errors_say_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(PathError) as info:
        parse_path(text)
    assert says in str(info.value)


def test_path_objects_validate() -> None:
    with pytest.raises(PathError):
        Path("PID", None, 3, None, None, 1)
    with pytest.raises(PathError):
        Path("PID", 0, 3)


# ------------------------------------------------------------------------------ header


def test_peek_header_from_bytes_and_text() -> None:
    for data in (S12, S12.encode(), b"\r\n" + S12.encode(), "\ufeff" + S12):
        header = peek_header(data)
        assert header.sending_application == "EPIC"
        assert header.sending_facility == "MAIN_HOSP"
        assert header.receiving_application == "ENGINE"
        assert header.receiving_facility == "CLINIC"
        assert (header.message_type, header.trigger, header.structure) == (
            "SIU", "S12", "SIU_S12"
        )
        assert header.control_id == "MSG00001"
        assert (header.processing_id, header.version) == ("P", "2.5.1")
        assert header.charset == "UNICODE UTF-8"
        assert header.fields[1] == "|"
        assert header.fields[2] == "^~\\&"
        assert header.fields[10] == "MSG00001"
        assert header.encoding == Encoding()


def test_peek_header_decodes_and_reads_modes() -> None:
    text = "MSH|^~\\&|EP\\T\\IC^X|F~G|R||||SIU^S14|ID\\F\\1|T^x|2.5.1|||AL|NE||8859/1~X\nPID|1"
    header = peek_header(text)
    assert header.sending_application == "EP&IC"
    assert header.sending_facility == "F"
    assert header.control_id == "ID|1"
    assert (header.accept_ack, header.app_ack) == ("AL", "NE")
    assert header.processing_id == "T"
    assert header.structure == ""
    assert header.charset == "8859/1"


def test_peek_header_reads_only_msh() -> None:
    header = peek_header(b"MSH|^~\\&|A|B\r\x00\xff garbage not even hl7")
    assert header.sending_application == "A"


@pytest.mark.parametrize("data", [b"PID|1\r", b"", "  MSH|^~\\&|A", b"\x0bMSH|^~\\&|A"])
def test_peek_header_rejects_non_msh(data: bytes | str) -> None:
    with pytest.raises(Er7Error) as info:
        peek_header(data)
    assert (info.value.code, info.value.location) == (100, "MSH^1")
