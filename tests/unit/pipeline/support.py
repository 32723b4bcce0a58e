"""Shared kit for the pipeline tests: the repository's synthetic samples, channel
configuration built directly from the typed model, mapping tables, and a configuration folder
written into tmp_path and read by the real loader.

Every name, id and value here is invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import EngineConfig, load
from engine.config.errors import ConfigProblem
from engine.config.model import ChannelConfig, Condition, DestinationConfig, Pos, StepSpec, Table
from engine.config.registry import CheckContext
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.steps.base import CompileContext
from engine.protocol.er7 import Message
from engine.runtime.processing import Decoded, decode
from tests.unit.config.support import ConfigDir

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples"
POS = Pos(Path("channels/test.yaml"), 1, 1)

TABLES = {
    "appointment_types": Table(
        "appointment_types",
        Path("transforms/tables/appointment_types.yaml"),
        {
            "new_patient_consult": {"ehr_code": "NP_EVAL_60", "minutes": 60, "insured": True},
            "follow_up": {"ehr_code": "FOLLOWUP_30", "minutes": 30, "insured": False},
            "odd_code": {"ehr_code": "A^B|C", "minutes": None},
        },
        frozenset({"ehr_code", "minutes", "insured"}),
    ),
    "providers": Table(
        "providers",
        Path("transforms/tables/providers.yaml"),
        {
            "P1001": {"ehr_id": "EHR-DR-0001"},
            "P1002": {"ehr_id": "EHR-DR-0002"},
            "P1003": {"ehr_id": "EHR-DR-0003"},
        },
        frozenset({"ehr_id"}),
    ),
}

# Two AIP segments, the second with two repetitions of AIP-3; PID-3 repeats; NTE twice.
MULTI = (
    "MSH|^~\\&|EPIC|MAIN_HOSP|ENGINE|CLINIC|20250310091500||SIU^S12^SIU_S12|CTL900|P|2.5.1\r"
    "SCH|APT9001^EPIC|F9001^CLINIC||||NEW|follow_up^Follow-up^LOCAL|Normal|30|min\r"
    "NTE|1||first note\r"
    "NTE|2||second note\r"
    "PID|1||MRN900^^^MAIN_HOSP^MR~ALT900^^^PARTNER^PI||Zzyzx^Quinn||19700101|X|||"
    "1 Nowhere St^^Testville^IL^60000^USA||555-0100|||||||||||||||||N\r"
    "PV1|1|O\r"
    "AIP|1|A|P1001^Rivera^Sam|AT\r"
    "AIP|2|A|P1002^Chen^Alex~P1003^Okafor^Jordan|AT\r"
)


# A FHIR Appointment as a booking front end might post it (server-owned id and meta
# included); ids and codes invented.
APPOINTMENT: dict[str, Any] = {
    "resourceType": "Appointment",
    "id": "srv-1",
    "meta": {"versionId": "1"},
    "identifier": [{"system": "urn:example:booking", "value": "BK-2001"}],
    "status": "booked",
    "start": "2025-04-01T09:00:00Z",
    "end": "2025-04-01T09:30:00Z",
    "minutesDuration": 30,
    "comment": "Bring the | form",
    "participant": [
        {
            "actor": {
                "type": "Patient",
                "identifier": {"system": "urn:example:mrn", "value": "MRN-ZZ-1"},
            },
            "status": "accepted",
        },
        {
            "actor": {
                "type": "Practitioner",
                "identifier": {"system": "urn:example:npi", "value": "PR-77"},
            },
            "status": "accepted",
        },
    ],
}


def appointment(**changes: Any) -> dict[str, Any]:
    """A deep copy of APPOINTMENT with top-level elements replaced (None removes one)."""
    out: dict[str, Any] = json.loads(json.dumps(APPOINTMENT))
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def sample(name: str) -> Decoded:
    """A repository sample decoded as intake decodes it."""
    decoded = decode((SAMPLES / name).read_bytes())
    assert decoded.rejection is None, decoded.rejection
    return decoded


def message(text: str = MULTI) -> Message:
    return Message.parse(text)


def specs(*steps: tuple[str, Any]) -> tuple[StepSpec, ...]:
    return tuple(StepSpec(kind, args, POS, i) for i, (kind, args) in enumerate(steps, 1))


def destination(name: str, order_by: str | None = None) -> DestinationConfig:
    return DestinationConfig(name, "test", "file", {"directory": "out"}, POS, order_by=order_by)


def channel_config(
    *steps: tuple[str, Any],
    name: str = "test",
    accept: tuple[str, ...] = (),
    filter: Condition | None = None,
    destinations: tuple[DestinationConfig, ...] = (destination("clinic-ehr"),),
) -> ChannelConfig:
    return ChannelConfig(
        name=name,
        file=Path(f"channels/{name}.yaml"),
        pos=POS,
        accept_types=accept,
        filter=filter,
        steps=specs(*steps),
        destinations=destinations,
    )


def compile_channel(
    config: ChannelConfig, transforms_dir: Path = REPO / "transforms"
) -> CompiledChannel:
    return CompiledChannel(config, CompileContext(dict(TABLES), transforms_dir))


def run(*steps: tuple[str, Any], text: str = MULTI, codec: str = "utf-8") -> ChannelOutcome:
    """Run a channel made of `steps` on `text`."""
    return compile_channel(channel_config(*steps)).run(text, codec)


def check_context(transforms_dir: Path = REPO / "transforms") -> CheckContext:
    """A plugin check context whose positions carry the key path in the file name, so a
    problem can be traced to the argument it names."""

    def at(where: tuple[str | int, ...]) -> Pos:
        return Pos(Path("/".join(str(w) for w in where) or "(args)"), 1, 1)

    return CheckContext(dict(TABLES), transforms_dir, at)


def described(problems: list[ConfigProblem]) -> list[str]:
    """`key/path: message` for each problem."""
    return [f"{p.pos.file}: {p.message}" for p in problems]


class ConfigRoot(ConfigDir):
    """A configuration folder in tmp_path, loaded with the engine's own steps and
    destinations."""

    def write_json(self, relative: str, document: dict[str, Any]) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document), encoding="utf-8")
        return path

    def copy_sample(self, name: str) -> Path:
        path = self.root / "samples" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((SAMPLES / name).read_bytes())
        return path

    def with_channel(self, text: str, name: str = "feed", timezone: str = "UTC") -> ConfigRoot:
        self.write(
            "routes.yaml",
            f"""\
            timezone: {timezone}
            listeners:
              epic-siu:
                mllp: {{port: 2575}}
            routes:
              epic-siu: [{name}]
            """,
        )
        self.write(f"channels/{name}.yaml", text)
        self.write(
            "transforms/tables/appointment_types.yaml",
            """\
            new_patient_consult: {ehr_code: NP_EVAL_60, minutes: 60}
            follow_up: {ehr_code: FOLLOWUP_30, minutes: 30}
            """,
        )
        self.write(
            "transforms/tables/providers.yaml",
            """\
            P1001: {ehr_id: EHR-DR-0001}
            P1002: {ehr_id: EHR-DR-0002}
            P1003: {ehr_id: EHR-DR-0003}
            """,
        )
        return self

    def load(self) -> EngineConfig:
        return load(self.root / "routes.yaml")

    def context(self, config: EngineConfig) -> CompileContext:
        return CompileContext.of(config)
