"""The shipped SIU samples through siu_to_fhir and assess, as the store will run them: one
appointment booked, rescheduled, modified and cancelled, replays and a late message."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

from engine.appointments import Known, appointment_key, assess, event_for
from engine.conversions import siu_to_fhir
from engine.conversions.codes import parse_hl7_timestamp
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Message

SAMPLES = Path(__file__).parents[3] / "samples"
SEQUENCE = ["siu_s12_new_patient.hl7", "siu_s13_reschedule.hl7", "siu_s14_modify.hl7",
            "siu_s15_cancel.hl7"]
EXPECTS_EXISTING = {"S13", "S14", "S15", "S16", "S17", "S26"}
NOW = 1_741_600_000.0


def load(name: str) -> tuple[dict[str, Any], float, bool]:
    """(Appointment, MSH-7 as unix time, whether the trigger implies an existing one)."""
    _, text, _ = decode_message((SAMPLES / name).read_bytes())
    message = Message.parse(text)
    sent = parse_hl7_timestamp(message.get("MSH-7"), UTC, "MSH-7")
    assert sent is not None
    return siu_to_fhir(message), sent.timestamp(), message.get("MSH-9.2") in EXPECTS_EXISTING


class Store:
    """The smallest stand-in for the versioned store: current version per key, history."""

    def __init__(self) -> None:
        self.current: dict[str, Known] = {}
        self.history: list[tuple[str, str, tuple[str, ...]]] = []
        self.events: list[str] = []

    def receive(self, name: str) -> str:
        resource, sent, existing = load(name)
        key = appointment_key(resource)
        known = self.current.get(key)
        result = assess(resource, known, source_time=sent, expects_existing=existing,
                        overlapping=[k for k in self.current.values() if k.key != key])
        self.history.append((name, result.change, tuple(w.kind for w in result.warnings)))
        if result.apply and result.change != "unchanged":
            version = known.version + 1 if known else 1
            self.current[key] = Known(key, version, resource, sent)
        event = event_for(result, resource, now=NOW)
        if event is not None:
            self.events.append(event["type"])
            # Provider and room names are in the resource (actor display); they stay home.
            names = [p["actor"]["display"] for p in resource["participant"]
                     if "display" in p["actor"]]
            assert names
            assert not any(n in json.dumps(event) for n in names)
        return result.change


def test_book_reschedule_modify_cancel_then_replays_change_nothing() -> None:
    store = Store()
    assert [store.receive(n) for n in SEQUENCE] == ["created", "rescheduled", "updated",
                                                     "cancelled"]
    assert store.events == ["appointment.created", "appointment.updated",
                            "appointment.updated", "appointment.cancelled"]
    assert all(kinds == () for _, _, kinds in store.history)
    (final,) = store.current.values()
    assert (final.version, final.resource["status"]) == (4, "cancelled")

    assert store.receive("siu_s15_cancel.hl7") == "unchanged"
    for name in SEQUENCE[:3]:  # older messages replayed after the cancellation
        store.receive(name)
    assert [kinds for _, _, kinds in store.history[5:]] == [("out-of-order",)] * 3
    assert store.events[4:] == []
    assert store.current[final.key] == final


def test_a_cancel_for_an_unseen_appointment_is_flagged_unknown() -> None:
    store = Store()
    assert store.receive("siu_s15_cancel.hl7") == "created"
    assert store.history[0][2] == ("unknown-appointment",)
    assert store.events == ["appointment.cancelled"]


def test_different_sample_appointments_do_not_clash() -> None:
    store = Store()
    for name in ["siu_s12_new_patient.hl7", "siu_s12_escapes.hl7", "siu_s12_latin1.hl7",
                 "siu_s12_lf_terminators.hl7"]:
        assert store.receive(name) == "created"
    assert all(kinds == () for _, _, kinds in store.history)
    assert len(store.current) == 4
