"""A replay to chosen destinations: one, several, or every one of its channels; a name no
channel has is refused before anything is replayed. Real engine, MLLP and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime.clock import SystemClock
from engine.runtime.replay import Replayer
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import channel, free_port, running, sample, write_config


@pytest.mark.parametrize("to,expected", [
    (None, {"clinic-ehr", "archive"}),
    ("archive", {"archive"}),
    (["archive"], {"archive"}),
    (["clinic-ehr", "archive"], {"clinic-ehr", "archive"}),
])  # fmt: skip
async def test_a_replay_goes_to_the_destinations_chosen(
    tmp_path: Path, to: str | list[str] | None, expected: set[str]
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"siu": channel(ehr_port, archive=tmp_path / "out")})
    async with FakeEhr(port=ehr_port), running(routes) as engine:
        client = await MllpClient.connect("127.0.0.1", listen)
        assert b"MSA|AA" in await client.send(sample("siu_s12_new_patient.hl7"))
        await client.close()
        replayer = Replayer(engine.config, engine.channels, engine.store, SystemClock())
        [plan] = await replayer.replay([1], to=to, dry_run=True)
        assert {destination for _, destination, _, _ in plan.sends} == expected
        with pytest.raises(ValueError, match="no channel has a destination named 'nope'"):
            await replayer.replay([1], to=["archive", "nope"], dry_run=True)
