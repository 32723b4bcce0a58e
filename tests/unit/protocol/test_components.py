"""`Message.components` reads what `get` reads, one component at a time, in one call."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.protocol.er7 import Message, PathError

SAMPLES = sorted((Path(__file__).resolve().parents[3] / "samples").glob("*.hl7"))
PATHS = ["MSH-1", "MSH-2", "MSH-1.1", "MSH-2.1", "MSH-9", "SCH-1", "SCH-7", "SCH-11", "SCH-11.4",
         "PID-3", "PID-3.4", "PID-3[2]", "PID-5", "PID-5.1", "PID-11", "AIL-3", "AIL-3.4",
         "AIP-3", "AIP[2]-3", "NTE-3", "ZZZ-1"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_components_equal_get_on_every_sample(sample: Path) -> None:
    message = Message.parse(sample.read_bytes().decode("latin-1"))
    for path in PATHS:
        assert message.components(path, 7) == [message.get(f"{path}.{n}") for n in range(1, 8)]


_TEXT = st.text(alphabet="ab^&~\\|E", max_size=12)


@given(field=st.lists(_TEXT, max_size=4))
def test_components_equal_get_on_generated_fields(field: list[str]) -> None:
    message = Message.parse("MSH|^~\\&|A\rZZZ|" + "|".join(f.replace("|", "") for f in field))
    for path in ("ZZZ-1", "ZZZ-2", "ZZZ-1.2", "ZZZ-2[2]"):
        assert message.components(path, 4) == [message.get(f"{path}.{n}") for n in range(1, 5)]


def test_a_subcomponent_path_is_refused() -> None:
    with pytest.raises(PathError):
        Message.parse("MSH|^~\\&|A\r").components("MSH-9.1.1", 2)
