"""The samples other tests and the demo rely on keep their promised shape."""

from __future__ import annotations

import pathlib

import pytest

from engine.protocol.charset import decode_message
from engine.protocol.er7 import Message
from tests.unit.protocol.samples import SAMPLE_FILES, sample_bytes

STATUS = {"S12": "Booked", "S13": "Booked", "S14": "Booked", "S15": "Cancelled",
          "S17": "Deleted", "S26": "Noshow"}
ORDER = ["MSH", "SCH", "NTE", "PID", "PV1", "RGS", "AIS", "AIG", "AIL", "AIP"]


def load(name: str) -> Message:
    return Message.parse(decode_message(sample_bytes(name))[1])


def test_the_promised_files_exist() -> None:
    assert {p.name for p in SAMPLE_FILES} == {
        "siu_s12_new_patient.hl7", "siu_s13_reschedule.hl7", "siu_s14_modify.hl7",
        "siu_s15_cancel.hl7", "siu_s17_delete.hl7", "siu_s26_noshow.hl7",
        "siu_s12_latin1.hl7", "siu_s12_lf_terminators.hl7", "siu_s12_escapes.hl7",
    }


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_shape(path: pathlib.Path) -> None:
    msg = load(path.name)
    assert [msg.get(f"MSH-{n}") for n in (3, 4, 5, 6, 12)] == [
        "EPIC", "MAIN_HOSP", "ENGINE", "CLINIC", "2.5.1"
    ]
    trigger = msg.get("MSH-9.2")
    assert path.name.startswith(f"siu_{trigger.lower()}_")
    assert msg.get("MSH-9.1") == "SIU"
    assert msg.get("SCH-25") == STATUS[trigger]
    names = msg.segment_names()
    assert names == [n for n in ORDER if n in names]  # in order, each once
    assert set(ORDER) - {"NTE"} <= set(names)
    assert msg.get("SCH-7.1") in ("new_patient_consult", "follow_up")
    assert msg.get("SCH-10") == "min"
    assert int(msg.get("SCH-9")) > 0
    assert len(msg.get("SCH-11.4")) == len(msg.get("SCH-11.5")) == 12
    assert msg.get("AIP-3.1") in ("P1001", "P1002", "P1003")
    assert msg.get("AIL-3") == "MAIN^^^CLINIC_A"
    assert msg.get("PID-3.1").startswith("MRN1000")
    assert msg.get("PID-3.4") == "MAIN_HOSP"
    for path_ in ("PID-5.1", "PID-7", "PID-11", "PID-13"):
        assert msg.get(path_), path_
    terminators = b"\n" if "lf_terminators" in path.name else b"\r"
    other = b"\r" if terminators == b"\n" else b"\n"
    assert other not in path.read_bytes() and path.read_bytes().endswith(terminators)


def test_control_ids_and_patients_are_distinct() -> None:
    msgs = {p.name: load(p.name) for p in SAMPLE_FILES}
    assert len({m.get("MSH-10") for m in msgs.values()}) == len(msgs)
    first = [msgs[f"siu_{t}.hl7"] for t in ("s12_new_patient", "s13_reschedule", "s14_modify",
                                            "s15_cancel")]
    assert {(m.get("SCH-1"), m.get("SCH-2")) for m in first} == {("APT1001^EPIC", "F5001^CLINIC")}
    assert msgs["siu_s17_delete.hl7"].get("SCH-1.1") == "APT1002"
    assert msgs["siu_s26_noshow.hl7"].get("SCH-1.1") == "APT1003"
    assert msgs["siu_s26_noshow.hl7"].get("SCH-7") == "follow_up^Follow-up visit^LOCAL"
    others = [m for n, m in msgs.items() if m not in first]
    assert len({m.get("PID-5.1") for m in others}) == len(others)


def test_latin1_sample_is_iso_8859_1_bytes() -> None:
    data = sample_bytes("siu_s12_latin1.hl7")
    assert "é".encode("latin-1") in data and "ü".encode("latin-1") in data
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    msg = load("siu_s12_latin1.hl7")
    assert msg.get("MSH-18") == "8859/1"
    assert "é" in msg.get("PID-5.2") and "ü" in msg.get("PID-5.1")


def test_escapes_sample() -> None:
    msg = load("siu_s12_escapes.hl7")
    assert msg.get_all("PID-3") == ["MRN100007^^^MAIN_HOSP^MR", "ALT5507^^^PARTNER^PI"]
    note = msg.get("NTE-3")
    for char in "|^&\\~\n":
        assert char in note
    assert msg.get("AIP-3.9.1") == "LOCAL" and msg.get("AIP-3.9.2")
