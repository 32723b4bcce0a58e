"""Synthetic HL7 v2 messages for destination and fake-EHR tests (invented people and ids)."""

from __future__ import annotations


def siu(control_id: str, *, charset: str = "", facility: str = "NORTH_CLINIC") -> bytes:
    """An SIU^S12 with the given MSH-10, encoded in the codec that MSH-18 names."""
    segments = [
        f"MSH|^~\\&|SCHEDAPP|{facility}|CLINIC_EHR|CLINIC|20240102030405||SIU^S12^SIU_S12|"
        f"{control_id}|P|2.5.1||||||{charset}",
        "SCH|APT-1001^SCHEDAPP|APT-1001^CLINIC||||ROUTINE|Normal|||"
        "^^^20240110090000^20240110093000||||||||||||||Booked",
        "PID|1||PAT-0001^^^SCHEDAPP^MR||TESTPERSON^ALEX||19800101|U",
        "RGS|1",
        "AIP|1||PROV-7^PROVIDER^SAM|ATTENDING",
    ]
    text = "\r".join(segments) + "\r"
    return text.encode("latin-1" if charset == "8859/1" else "utf-8")
