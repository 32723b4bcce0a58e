"""The `python` step: a function from transforms/<module>.py written into tmp_path, run
inside a channel, with each way it can return or fail, and the configuration check that finds
the module and the function."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config.model import StepSpec
from engine.pipeline.channel import ChannelOutcome
from engine.pipeline.context import RunContext
from engine.pipeline.steps import REGISTRY, compile_step
from engine.pipeline.steps.base import CompileContext
from engine.pipeline.transforms import TransformError, load_function
from tests.unit.pipeline.support import (
    MULTI,
    POS,
    TABLES,
    channel_config,
    check_context,
    compile_channel,
    described,
    message,
)

CUSTOM = '''\
"""Synthetic transforms for the pipeline tests."""
from engine.pipeline.errors import StepError
from engine.protocol.er7 import Message

CONSTANT = "not a function"


def mark_inpatient(message):
    message.set("PV1-2", "I")
    return message


def in_place(message):
    message.set("MSH-5", "IN_PLACE")


def replace(message):
    return Message.parse(
        "MSH|^~\\\\&|NEW|FAC|RECV|FAC|20250101||SIU^S12|NEW1|P|2.5.1\\rSCH|APT-NEW\\r"
    )


def refuse(message):
    raise StepError("no attending provider", field="AIP-4", code=101)


def crash(message):
    raise KeyError(message.get("PID-5.1"))


def wrong_type(message):
    return message.to_er7()
'''


@pytest.fixture
def transforms(tmp_path: Path) -> Path:
    folder = tmp_path / "transforms"
    folder.mkdir()
    (folder / "custom.py").write_text(CUSTOM, encoding="utf-8")
    (folder / "broken.py").write_text("def f(message):\n    return (\n", encoding="utf-8")
    return folder


def run_python(transforms: Path, name: str) -> ChannelOutcome:
    config = channel_config(("set", {"MSH-6": "CLINIC_B"}), ("python", name))
    return compile_channel(config, transforms).run(MULTI, "utf-8")


def test_a_function_that_changes_the_message(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.mark_inpatient")
    assert outcome.status == "ok" and outcome.message is not None
    assert outcome.message.get("PV1-2") == "I"
    assert outcome.message.get("MSH-6") == "CLINIC_B"  # the step before it still counts
    assert b"\rPV1|1|I\r" in outcome.output


def test_a_function_returning_none_changed_the_message_in_place(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.in_place")
    assert outcome.status == "ok" and outcome.message is not None
    assert outcome.message.get("MSH-5") == "IN_PLACE"


def test_a_function_returning_a_new_message_replaces_it(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.replace")
    assert outcome.status == "ok"
    assert outcome.output == (
        b"MSH|^~\\&|NEW|FAC|RECV|FAC|20250101||SIU^S12|NEW1|P|2.5.1\rSCH|APT-NEW\r"
    )


def test_a_step_error_keeps_its_text_field_and_code(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.refuse")
    assert outcome.status == "error"
    assert (outcome.error, outcome.error_field, outcome.error_code, outcome.error_step) == (
        "no attending provider", "AIP-4", 101, "steps[2] python"
    )
    assert outcome.payloads == [] and outcome.output == b""


def test_another_exception_is_named_by_type_only(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.crash")
    assert outcome.status == "error"
    assert outcome.error == "steps[2] python (custom.crash) raised KeyError"
    assert "Zzyzx" not in outcome.error  # the exception's text quotes the message
    assert outcome.error_detail == "KeyError: 'Zzyzx'"  # kept for the store
    assert (outcome.error_step, outcome.error_code) == ("steps[2] python", 207)


def test_a_wrong_return_type_fails_the_channel(transforms: Path) -> None:
    outcome = run_python(transforms, "custom.wrong_type")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[2] python (custom.wrong_type) returned str, expected the document "
        "(a Message or a dict) or None"
    )


def test_compiling_uses_a_function_already_loaded(transforms: Path) -> None:
    ctx = CompileContext(dict(TABLES), transforms)
    compile_step(StepSpec("python", "custom.in_place", POS, 1), ctx)
    assert list(ctx.functions) == ["custom.in_place"]
    calls: list[str] = []
    # A name the folder does not define: found in the context, it is not imported again.
    ctx.functions["custom.elsewhere"] = lambda message: calls.append(message.get("MSH-10"))
    step = compile_step(StepSpec("python", "custom.elsewhere", POS, 4), ctx)
    step.apply(message(), RunContext())
    assert (step.label, calls) == ("steps[4] python", ["CTL900"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.f", "(args): transforms/missing.py does not exist"),
        ("custom.absent", "(args): transforms/custom.py has no function 'absent'"),
        ("custom.CONSTANT", "(args): transforms/custom.py has no function 'CONSTANT'"),
        ("broken.f", "(args): transforms/broken.py failed to import: SyntaxError: "),
    ],
)
def test_the_check_finds_missing_modules_and_functions(
    transforms: Path, name: str, expected: str
) -> None:
    [problem] = described(REGISTRY["python"].check(name, check_context(transforms)))
    assert problem.startswith(expected)


def test_the_check_passes_an_existing_function(transforms: Path) -> None:
    assert REGISTRY["python"].check("custom.crash", check_context(transforms)) == []


def test_load_function_refuses_a_name_that_is_not_module_dot_function(transforms: Path) -> None:
    with pytest.raises(TransformError, match=r"expected 'module\.function'"):
        load_function(transforms, "custom")


def test_two_transforms_folders_do_not_share_modules(tmp_path: Path, transforms: Path) -> None:
    other = tmp_path / "other" / "transforms"
    other.mkdir(parents=True)
    (other / "custom.py").write_text(
        textwrap.dedent("""\
            def in_place(message):
                message.set("MSH-5", "OTHER")
            """),
        encoding="utf-8",
    )
    ours = run_python(transforms, "custom.in_place")
    theirs = run_python(other, "custom.in_place")
    assert ours.message is not None and theirs.message is not None
    assert (ours.message.get("MSH-5"), theirs.message.get("MSH-5")) == ("IN_PLACE", "OTHER")


def test_a_changed_module_is_imported_again_and_an_unchanged_one_is_not(tmp_path: Path) -> None:
    """What a reload relies on: new code after an edit, the same module object otherwise,
    and a function already loaded keeps working as it was."""
    folder = tmp_path / "transforms"
    folder.mkdir()
    module = folder / "codes.py"
    module.write_text("def code(doc):\n    return 'first'\n")
    first = load_function(folder, "codes.code")
    assert load_function(folder, "codes.code") is first
    module.write_text("def code(doc):\n    return 'second'\n")
    second = load_function(folder, "codes.code")
    assert (first(None), second(None)) == ("first", "second")
    module.write_text("def code(doc):\n    return (\n")  # broken: the last good one stays
    with pytest.raises(TransformError, match="failed to import: SyntaxError"):
        load_function(folder, "codes.code")
    module.write_text("def code(doc):\n    return 'second'\n")
    assert load_function(folder, "codes.code") is second
