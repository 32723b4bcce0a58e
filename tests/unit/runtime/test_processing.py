"""From bytes to channel outcomes: `decode` (charset, header checks, index keys and the AR
code of each rejection), `route` (which channels take a message, 200 vs 201) and
`run_channels`, on the repository samples and synthetic messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.model import ChannelConfig, Pos, StepSpec
from engine.pipeline.channel import CompiledChannel
from engine.pipeline.steps.base import CompileContext
from engine.runtime.processing import Rejection, decode, route, run_channels
from engine.store.base import MessageKeys

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "samples"
POS = Pos(Path("channels/test.yaml"), 1, 1)
HEAD = b"MSH|^~\\&|SENDER|FAC|RECV|FAC|20250101120000||"


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "keys", "codec"),
    [
        (
            "siu_s12_new_patient.hl7",
            MessageKeys("EPIC", "MAIN_HOSP", "MSG00001", "SIU^S12", "2.5.1",
                        ("MRN100001",), ("APT1001", "F5001")),
            "utf-8",
        ),
        (
            "siu_s12_latin1.hl7",
            MessageKeys("EPIC", "MAIN_HOSP", "MSG00007", "SIU^S12", "2.5.1",
                        ("MRN100004",), ("APT1004", "F5004")),
            "latin-1",
        ),
        (
            "siu_s12_escapes.hl7",
            MessageKeys("EPIC", "MAIN_HOSP", "MSG00009", "SIU^S12", "2.5.1",
                        ("MRN100007", "ALT5507"), ("APT1006", "F5006")),
            "utf-8",
        ),
        (
            "siu_s12_lf_terminators.hl7",
            MessageKeys("EPIC", "MAIN_HOSP", "MSG00008", "SIU^S12", "2.5.1",
                        ("MRN100005",), ("APT1005", "F5005")),
            "utf-8",
        ),
        (
            "siu_s26_noshow.hl7",
            MessageKeys("EPIC", "MAIN_HOSP", "MSG00006", "SIU^S26", "2.5.1",
                        ("MRN100003",), ("APT1003", "F5003")),
            "utf-8",
        ),
    ],
)
def test_samples_decode_with_their_keys(name: str, keys: MessageKeys, codec: str) -> None:
    decoded = decode(raw(name))
    assert decoded.rejection is None
    assert (decoded.keys, decoded.codec, decoded.message_type) == (keys, codec, keys.message_type)
    assert decoded.header is not None and decoded.header.control_id == keys.control_id


def test_latin1_text_is_decoded_once_with_the_declared_charset() -> None:
    decoded = decode(raw("siu_s12_latin1.hl7"))
    assert "Grünwaldtest" in decoded.text and "Renée" in decoded.text


def test_keys_come_from_every_pid_and_repetition_without_duplicates_or_empties() -> None:
    data = (
        HEAD + b"SIU^S12|CTL1|P|2.5.1\r"
        b"SCH||F77^CLINIC\r"
        b"PID|1||MRN1^^^H^MR~~MRN1^^^H^MR~ALT1^^^P^PI\r"
        b"PID|2||^^^H^MR~MRN2\r"
    )
    keys = decode(data).keys
    assert keys.patient_ids == ("MRN1", "ALT1", "MRN2")
    assert keys.appointment_ids == ("F77",)  # SCH-1 empty: only the filler id


def test_the_same_placer_and_filler_id_is_one_key() -> None:
    data = HEAD + b"SIU^S12|CTL1|P|2.5.1\rSCH|A1^X|A1^Y\r"
    assert decode(data).keys.appointment_ids == ("A1",)


@pytest.mark.parametrize(
    ("data", "code", "location"),
    [
        (b"", 100, "MSH^1"),
        (b"PID|1||MRN1\r", 100, "MSH^1"),
        (b"\xef\xbb\xbfhello\r", 100, "MSH^1"),
        (b"MSH\r", 102, "MSH^1^1"),
        (b"MSH|^~|A\r", 102, "MSH^1^2"),
        (HEAD + b"SIU^S12|CTL1|P|2.5.1\rSCH|A1\rpid|1\r", 100, ""),
        (HEAD + b"SIU^S12|CTL1|P|2.5.1\rSCHX\r", 100, ""),
        (HEAD + b"SIU^S12||P|2.5.1\r", 101, "MSH^1^10"),
        (HEAD + b"|CTL1|P|2.5.1\r", 101, "MSH^1^9"),
        (HEAD + b"SIU|CTL1|P|2.5.1\r", 101, "MSH^1^9"),
        (HEAD + b"^S12|CTL1|P|2.5.1\r", 101, "MSH^1^9"),
        # MSH-18 names a charset outside table 0211: table value not found.
        (HEAD + b"SIU^S12|CTL1|P|2.5.1||||||KLINGON-8\r", 103, "MSH^1^18"),
        # Bytes that are not what MSH-18 (here the UTF-8 default) says: data type error.
        (HEAD + b"SIU^S12|CTL1|P|2.5.1\rPID|1||MRN1||Gr\xfcn\r", 102, "MSH^1^18"),
        (HEAD + b"SIU^S12|CTL1|P|2.5.1||||||ASCII\rPID|1||MRN1||Gr\xc3\xbcn\r", 102, "MSH^1^18"),
    ],
)
def test_rejections_carry_the_hl7_code_and_location(data: bytes, code: int, location: str) -> None:
    rejection = decode(data).rejection
    assert rejection is not None
    assert (rejection.code, rejection.location) == (code, location)


def test_rejection_texts_do_not_quote_the_message() -> None:
    for data in (
        HEAD + b"SIU^S12|CTL1|P|2.5.1\rPID|1||MRN1||Gr\xfcnwald\r",
        HEAD + b"SIU^S12|CTL1|P|2.5.1\rPID|1||MRN1||Grunwald\rxx\r",
        HEAD + b"SIU^S12||P|2.5.1\rPID|1||MRN1||Grunwald\r",
    ):
        rejection = decode(data).rejection
        assert rejection is not None and rejection.text
        assert "MRN1" not in rejection.text and "Gr" not in rejection.text


def test_a_rejected_message_still_has_the_header_it_could_read() -> None:
    decoded = decode(HEAD + b"SIU^S12||P|2.5.1\r")
    assert decoded.header is not None and decoded.keys.sender == "SENDER"
    assert decode(b"garbage").header is None


def channel(name: str, *accept: str, steps: tuple[StepSpec, ...] = ()) -> CompiledChannel:
    config = ChannelConfig(name, Path(f"channels/{name}.yaml"), POS, accept_types=accept,
                           steps=steps)
    return CompiledChannel(config, CompileContext({}, ROOT / "transforms"))


CHANNELS = {
    "siu": channel("siu", "SIU^S12", "SIU^S15"),
    "cancellations": channel("cancellations", "SIU^S15"),
    "everything": channel("everything"),
}


def decoded_type(message_type: bytes) -> bytes:
    return HEAD + message_type + b"|CTL1|P|2.5.1\r"


def test_route_keeps_the_listener_order_of_the_channels_that_accept() -> None:
    decoded = decode(decoded_type(b"SIU^S15"))
    routed = route(decoded, ("cancellations", "siu"), CHANNELS)
    assert isinstance(routed, list) and [c.name for c in routed] == ["cancellations", "siu"]
    routed = route(decode(decoded_type(b"SIU^S12")), ("cancellations", "siu"), CHANNELS)
    assert isinstance(routed, list) and [c.name for c in routed] == ["siu"]


def test_an_unknown_trigger_of_an_accepted_family_is_201() -> None:
    rejection = route(decode(decoded_type(b"SIU^S16")), ("siu", "cancellations"), CHANNELS)
    assert rejection == Rejection(201, "MSH^1^9", "no route accepts message type SIU^S16")


def test_an_unknown_message_type_is_200() -> None:
    rejection = route(decode(decoded_type(b"ADT^A01")), ("siu",), CHANNELS)
    assert rejection == Rejection(200, "MSH^1^9", "no route accepts message type ADT^A01")


def test_a_listener_without_channels_is_200() -> None:
    rejection = route(decode(decoded_type(b"SIU^S12")), ("gone",), CHANNELS)
    assert rejection == Rejection(200, "MSH^1^9", "no channel is routed from this listener")


def test_a_channel_with_no_accept_list_takes_every_type() -> None:
    routed = route(decode(decoded_type(b"ADT^A01")), ("siu", "everything"), CHANNELS)
    assert isinstance(routed, list) and [c.name for c in routed] == ["everything"]


def test_run_channels_gives_one_outcome_per_channel_in_order() -> None:
    renamer = channel(
        "renamer", steps=(StepSpec("set", {"MSH-5": "RENAMED"}, POS, 1),)
    )
    decoded = decode(raw("siu_s12_latin1.hl7"))
    outcomes = run_channels(decoded, [renamer, CHANNELS["everything"]])
    assert [(o.channel, o.status, o.codec) for o in outcomes] == [
        ("renamer", "ok", "latin-1"),
        ("everything", "ok", "latin-1"),
    ]
    assert b"|RENAMED|" in outcomes[0].output and b"|RENAMED|" not in outcomes[1].output
    assert outcomes[1].output == raw("siu_s12_latin1.hl7")  # untouched: byte for byte
