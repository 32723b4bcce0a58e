"""The file destination: atomic writes, the filename template, failures as Retry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.destinations.base import DeliveryMeta, Reject, Retry, Sent
from engine.destinations.file import FileDestination, check_filename
from tests.unit.destinations.samples import siu

META = DeliveryMeta(delivery_id=9, message_id=7, channel="siu-to-clinic")


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


async def test_default_name_and_content_and_missing_directory_is_created(tmp_path: Path) -> None:
    out = tmp_path / "outbox" / "clinic"
    d = FileDestination("archive", directory=out)
    outcome = await d.send(siu("MSG0001"), META)
    assert outcome == Sent(code="", response=b"written 7-9.hl7")
    assert (out / "7-9.hl7").read_bytes() == siu("MSG0001")
    assert sorted(p.name for p in out.iterdir()) == ["7-9.hl7"]  # no temp file left behind
    assert (out / "7-9.hl7").stat().st_mode & 0o077 == 0  # PHI: owner only
    assert d.concurrency == 1


async def test_template_placeholders_are_filled_and_sanitised(tmp_path: Path) -> None:
    d = FileDestination(
        "archive", directory=tmp_path, filename="{channel}_{control_id}_{message_id:05d}.txt"
    )
    meta = DeliveryMeta(delivery_id=3, message_id=42, channel="clinic ehr/è")
    outcome = await d.send(siu("A/B C..%1"), meta)
    assert isinstance(outcome, Sent)
    assert (tmp_path / "clinic_ehr___A_B_C.._1_00042.txt").read_bytes() == siu("A/B C..%1")


async def test_the_final_name_appears_only_complete_and_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", fd_path(fd)))
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        # At the moment the name appears, the temp file beside it already holds everything.
        assert Path(src).parent == tmp_path
        assert Path(src).read_bytes() == siu("MSG0001")
        assert not Path(dst).exists()
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    outcome = await FileDestination("archive", directory=tmp_path).send(siu("MSG0001"), META)
    assert isinstance(outcome, Sent)
    final = str(tmp_path / "7-9.hl7")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".7-9.hl7."))  # the temp file
    assert events[1][1] == final
    assert events[2][1] == str(tmp_path)  # the directory, so the rename is durable


async def test_a_retry_overwrites_its_own_file(tmp_path: Path) -> None:
    d = FileDestination("archive", directory=tmp_path)
    (tmp_path / "7-9.hl7").write_bytes(b"half a fi")
    assert isinstance(await d.send(siu("MSG0001"), META), Sent)
    assert [p.name for p in tmp_path.iterdir()] == ["7-9.hl7"]
    assert (tmp_path / "7-9.hl7").read_bytes() == siu("MSG0001")


async def test_unwritable_directory_is_retry_without_content(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    d = FileDestination("archive", directory=blocker / "out")
    outcome = await d.send(siu("MSG0001"), META)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith(f"could not write 7-9.hl7 in {blocker / 'out'}: ")
    assert "TESTPERSON" not in outcome.reason


async def test_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    outcome = await FileDestination("archive", directory=tmp_path).send(siu("MSG0001"), META)
    assert outcome == Retry("could not write 7-9.hl7 in " + str(tmp_path) + ": Input/output error")
    assert list(tmp_path.iterdir()) == []


async def test_message_without_header_gets_an_empty_control_id(tmp_path: Path) -> None:
    d = FileDestination("archive", directory=tmp_path, filename="{control_id}x{delivery_id}")
    assert isinstance(await d.send(b"not hl7", META), Sent)
    assert (tmp_path / "x9").read_bytes() == b"not hl7"


async def test_a_name_that_is_no_plain_file_name_is_rejected(tmp_path: Path) -> None:
    d = FileDestination("archive", directory=tmp_path, filename="{control_id}")
    outcome = await d.send(siu(".."), META)
    assert isinstance(outcome, Reject)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{message_id}-{delivery_id}.hl7", None),
        ("{control_id}.hl7", None),
        ("{patient}.hl7", "unknown placeholder {patient}"),
        ("{0}.hl7", "unknown placeholder {0}"),
        ("sub/{message_id}.hl7", "expected a plain file name"),
        ("{message_id:/>8}", "expected a plain file name"),
        ("{message_id", "expected a filename template"),
        ("{channel:d}", "expected a filename template"),
    ],
)
def test_check_filename(template: str, problem: str | None) -> None:
    found = check_filename(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)
    if problem is not None:
        with pytest.raises(ValueError):
            FileDestination("archive", directory=Path("/nonexistent"), filename=template)
