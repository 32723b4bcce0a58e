"""ACKs: fields where the standard puts them, readable by python-hl7 and by parse_ack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest

from engine.protocol.ack import AckError, build_ack, parse_ack
from engine.protocol.er7 import Er7Error, Message, peek_header
from tests.unit.protocol.samples import sample_bytes

NOW = datetime(2025, 3, 10, 9, 15, 30, tzinfo=timezone(timedelta(hours=-5)))
S12 = peek_header(sample_bytes("siu_s12_new_patient.hl7"))


def test_accept_ack_fields() -> None:
    text = build_ack(S12, "AA", "", control_id="ACK000001", now=NOW)
    assert text == (
        "MSH|^~\\&|ENGINE|CLINIC|EPIC|MAIN_HOSP|20250310091530-0500||ACK^S12^ACK|ACK000001|P|"
        "2.5.1||||||UNICODE UTF-8\rMSA|AA|MSG00001|\r"
    )
    theirs = hl7.parse(text)
    assert theirs["MSH.F3"] == "ENGINE"
    assert theirs["MSH.F5"] == "EPIC"
    assert theirs["MSH.F9.R1.C2"] == "S12"
    assert theirs["MSH.F10"] == "ACK000001"
    assert theirs["MSH.F18"] == "UNICODE UTF-8"
    assert theirs["MSA.F1"] == "AA"
    assert theirs["MSA.F2"] == "MSG00001"


def test_error_ack_with_err_segments() -> None:
    errors = [
        AckError(103, "Appointment type not mapped", "SCH^1^7^1^1"),
        AckError(207, "Step 3 failed | internal", severity="W"),
    ]
    text = build_ack(S12, "AE", "Rejected: see ERR", control_id="A2", now=NOW, errors=errors)
    theirs = hl7.parse(text)
    err1, _ = theirs.segments("ERR")
    assert str(err1(2)) == "SCH^1^7^1^1"
    assert str(err1(3)) == "103^Table value not found^HL70357"
    assert str(err1(4)) == "E"
    assert str(err1(8)) == "Appointment type not mapped"
    assert theirs["ERR2.F3.R1.C1"] == "207"
    assert theirs["ERR2.F3.R1.C2"] == "Application internal error"
    assert theirs["ERR2.F4"] == "W"
    assert theirs["ERR2.F8"] == "Step 3 failed | internal"
    info = parse_ack(text)
    assert info.code == "AE"
    assert info.acked_control_id == "MSG00001"
    assert info.control_id == "A2"
    assert info.text == "Rejected: see ERR"
    assert info.errors == ("Appointment type not mapped", "Step 3 failed | internal")


def test_custom_encoding_is_reused() -> None:
    original = "MSH#*~\\&#SEND#FAC#RECV*X#RFAC#2025##SIU*S14#ID*7#T#2.4\rPID#1\r"
    text = build_ack(peek_header(original), "AE", "bad * value", control_id="K",
                     now=NOW.astimezone(UTC), errors=[AckError(101, "missing", "PID^1^3")])
    assert text.startswith(
        "MSH#*~\\&#RECV*X#RFAC#SEND#FAC#20250310141530+0000##ACK*S14*ACK#K#T#2.4\r"
    )
    msg = Message.parse(text)
    assert msg.get("MSA-2") == "ID*7"  # raw MSH-10 copied; it is one field here
    assert msg.get("MSA-3") == "bad * value"
    assert msg.get("ERR-2") == "PID*1*3"
    assert msg.get("ERR-3.2") == "Required field missing"
    assert parse_ack(text).acked_control_id == "ID*7"


def test_empty_receiver_falls_back_to_application_and_facility() -> None:
    original = peek_header("MSH|^~\\&|SEND|FAC|||2025||SIU^S12|C9|P|2.5.1\r")
    msg = Message.parse(build_ack(original, "AA", "", control_id="Z", now=NOW,
                                  application="ENG", facility="SITE"))
    assert (msg.get("MSH-3"), msg.get("MSH-4")) == ("ENG", "SITE")
    assert (msg.get("MSH-5"), msg.get("MSH-6")) == ("SEND", "FAC")
    assert msg.get("MSH-18") == ""


def test_ack_for_unreadable_input() -> None:
    text = build_ack(None, "AR", "Message could not be read", control_id="Z1", now=NOW,
                     errors=[AckError(100, "no MSH segment", "MSH^1")])
    msg = Message.parse(text)
    assert msg.get("MSA-1") == "AR"
    assert msg.get("MSA-2") == ""
    assert msg.get("MSH-3") == "ENGINE"
    assert (msg.get("MSH-11"), msg.get("MSH-12")) == ("P", "2.5.1")
    assert msg.get("MSH-9") == "ACK^^ACK"
    assert hl7.parse(text)["ERR.F3.R1.C2"] == "Segment sequence error"
    assert text.endswith("\r") and text.count("\r") == 3


def test_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError):
        build_ack(S12, "AA", "", control_id="Z", now=datetime(2025, 1, 1))


def test_parse_ack_legacy_err1_and_missing_msa() -> None:
    legacy = "MSH|^~\\&|R|F|S|F|2025||ACK^S12|X|P|2.3\rMSA|AE|C1|oops\rERR|PID^1^3^101&Missing\r"
    assert parse_ack(legacy).errors == ("Missing",)
    with pytest.raises(Er7Error) as info:
        parse_ack("MSH|^~\\&|R|F|S|F|2025||ACK^S12|X|P|2.3\r")
    assert info.value.code == 100
