"""The suite's scan of its own logs for the samples' PHI (issue 4, item 7).

It owns three things: the synthetic PHI of samples/ (patient names, birth dates, identifiers,
address parts, phone numbers and e-mail addresses), read by a small ER7 / JSON reader of its
own so that a bug in the engine's parser cannot hide a leak; the capture of every log line the
engine emits during a test session (the `engine` loggers at DEBUG in this process, formatted as
`engine run` formats them, the stderr of `engine` commands run through the integration tests'
`Result`, and the `*.log` files the tests write under the session's tmp_path); and the verdict
at session end.

The rule it keeps: a finding says where the value was (source, logger, level, message template,
test) and shows the value only masked (first character and length), so the report is itself
free of PHI.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The format `engine run` logs in (engine/cli.py `_setup_logging`), so that what is scanned is
# what an operator's log file would hold.
ENGINE_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Below this length a letters value ("Sage", "IL") is matched only as a whole word; digits-only
# values are always matched as whole numbers, so a zip code is not found inside a timestamp.
_ANYWHERE_MIN = 6
# Fragments of an escaped or non-ASCII value kept as values of their own (e.g. the street
# before an HL7 escape, the ASCII run of a name a log might show as a bytes repr).
_FRAGMENT_MIN = 8


@dataclass(frozen=True)
class PhiValue:
    kind: str  # e.g. "PID-5.1 family name"
    text: str
    sample: str

    @property
    def masked(self) -> str:
        return f"{self.text[0]}…({len(self.text)} chars)"


@dataclass(frozen=True)
class Finding:
    value: PhiValue
    source: str  # "log record", "engine command stderr", or a log file's path
    place: str  # what emitted it: logger, level, message template and code line if known
    context: str  # the test running, or the line number in a file


def report(findings: Iterable[Finding]) -> list[str]:
    """One line per (source, place): how many hits, which values (masked), first context."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.source, finding.place), []).append(finding)
    lines = []
    for (source, place), group in groups.items():
        values = sorted({f"{f.value.kind} of {f.value.sample} {f.value.masked}" for f in group})
        lines.append(
            f"{source}: {place}: {len(group)} hits, first {group[0].context}; values: "
            + "; ".join(values)
        )
    return lines


# --- the samples' PHI, read independently of engine.protocol ---------------------------------

_ER7_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def _unescape(value: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return _ER7_ESCAPES.get(code, " " if code == ".br" else "")

    return re.sub(r"\\([^\\]*)\\", one, value)


def _variants(raw: str) -> list[str]:
    """The forms a value may take in a log: as sent, unescaped, and its long plain fragments
    (split at escapes and at non-ASCII letters, which a bytes repr shows as \\xNN)."""
    forms = {raw, _unescape(raw)}
    for form in list(forms):
        for fragment in re.split(r"\\[^\\]*\\|[^\x20-\x7e]+", form):
            if len(fragment.strip()) >= _FRAGMENT_MIN:
                forms.add(fragment.strip())
    return sorted(f for f in forms if f)


def _components(field: str) -> list[list[str]]:
    """Repetitions of a field, each split into components."""
    return [rep.split("^") for rep in field.split("~") if rep]


def _charset(msh: list[str]) -> str:
    # MSH-18 is fields[17] because MSH-1 is the separator itself.
    declared = msh[17] if len(msh) > 17 else ""
    return "latin-1" if declared.startswith("8859/1") else "utf-8"


def _er7_phi(path: Path) -> Iterator[PhiValue]:
    data = path.read_bytes()
    segments = [s for s in re.split(rb"\r\n|\r|\n", data) if s]
    charset = _charset(segments[0].decode("latin-1").split("|")) if segments else "utf-8"
    for seg in segments:
        fields = seg.decode(charset).split("|")
        if fields[0] != "PID":
            continue

        def comp(number: int, fields: list[str] = fields) -> list[list[str]]:
            return _components(fields[number]) if number < len(fields) else []

        found: list[tuple[str, str]] = []
        for rep in comp(3):
            found.append(("PID-3.1 identifier", rep[0]))
        for rep in comp(5):
            found += [("PID-5.1 family name", rep[0])]
            found += [("PID-5.2 given name", rep[1])] if len(rep) > 1 else []
        for rep in comp(7):
            found.append(("PID-7 birth date", rep[0][:8]))
            if len(rep[0]) >= 8:
                d = rep[0]
                found.append(("PID-7 birth date", f"{d[:4]}-{d[4:6]}-{d[6:8]}"))
        for rep in comp(11):
            # Street lines, city and zip; state and country identify no one.
            for i, kind in ((0, "street"), (1, "street"), (2, "city"), (4, "zip")):
                if i < len(rep):
                    found.append((f"PID-11.{i + 1} {kind}", rep[i]))
        for rep in comp(13):
            if len(rep) > 3:
                found.append(("PID-13.4 e-mail", rep[3]))
            if len(rep) > 6 and rep[6]:
                local, area = rep[6], rep[5] if len(rep) > 5 else ""
                found.append(("PID-13.7 phone", local))
                if len(local) == 7:
                    found.append(("PID-13.7 phone", f"{local[:3]}-{local[3:]}"))
                if area:
                    found.append(("PID-13.6+7 phone", area + local))
        for kind, raw in found:
            for text in _variants(raw):
                yield PhiValue(kind, text, path.name)


def _patients(node: Any) -> Iterator[dict[str, Any]]:
    """Patient resources and Patient references anywhere in a FHIR document."""
    if isinstance(node, dict):
        reference = str(node.get("reference", ""))
        if node.get("resourceType") == "Patient" or node.get("type") == "Patient" or (
            reference.startswith("Patient/")
        ):
            yield node
        for child in node.values():
            yield from _patients(child)
    elif isinstance(node, list):
        for child in node:
            yield from _patients(child)


def _fhir_phi(path: Path) -> Iterator[PhiValue]:
    found: list[tuple[str, str]] = []
    for patient in _patients(json.loads(path.read_text(encoding="utf-8"))):
        identifiers = patient.get("identifier", [])
        for ident in identifiers if isinstance(identifiers, list) else [identifiers]:
            found.append(("Patient identifier", str(ident.get("value", ""))))
        found.append(("Patient display", str(patient.get("display", ""))))
        found.append(("Patient birthDate", str(patient.get("birthDate", ""))))
        for name in patient.get("name", []):
            found += [("Patient family name", str(name.get("family", "")))]
            found += [("Patient given name", str(g)) for g in name.get("given", [])]
        for telecom in patient.get("telecom", []):
            found.append(("Patient telecom", str(telecom.get("value", ""))))
        for address in patient.get("address", []):
            found += [("Patient address line", str(line)) for line in address.get("line", [])]
            found += [(f"Patient address {k}", str(address.get(k, ""))) for k in ("city",)]
            found += [("Patient address postalCode", str(address.get("postalCode", "")))]
    for kind, text in found:
        if text:
            yield PhiValue(kind, text, path.name)


def synthetic_phi(samples: Path) -> list[PhiValue]:
    """Every PHI value of the samples, once per distinct text (case-insensitive)."""
    values: dict[str, PhiValue] = {}
    for path in sorted(samples.iterdir()):
        reader = {".hl7": _er7_phi, ".json": _fhir_phi}.get(path.suffix)
        for value in reader(path) if reader else ():
            if len(value.text.strip()) >= 3:  # a middle initial would match everywhere
                values.setdefault(value.text.casefold(), value)
    return list(values.values())


# --- matching ---------------------------------------------------------------------------------


class PhiMatcher:
    """One regex for all values; `find` names the values present in a text."""

    def __init__(self, values: Iterable[PhiValue]) -> None:
        self.values = list(values)
        parts = []
        for i, value in enumerate(self.values):
            body = re.escape(value.text)
            if value.text.isdigit():
                body = rf"(?<!\d){body}(?!\d)"
            elif len(value.text) < _ANYWHERE_MIN:
                body = rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])"
            parts.append(f"(?P<v{i}>{body})")
        self._regex = re.compile("|".join(parts) or r"(?!)", re.IGNORECASE)

    def find(self, text: str) -> list[PhiValue]:
        seen: dict[str, PhiValue] = {}
        for m in self._regex.finditer(text):
            value = self.values[int(str(m.lastgroup)[1:])]
            seen.setdefault(value.text, value)
        return list(seen.values())


# --- capture ----------------------------------------------------------------------------------


class ScanHandler(logging.Handler):
    """Formats each record as `engine run` would and keeps a finding per PHI value in it."""

    def __init__(self, matcher: PhiMatcher, current_test: Callable[[], str]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(ENGINE_LOG_FORMAT))
        self.matcher = matcher
        self.current_test = current_test
        self.findings: list[Finding] = []
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is logging's own concern
            self.handleError(record)
            return
        for value in self.matcher.find(text):
            place = (
                f"logger {record.name} {record.levelname} template {str(record.msg)!r} "
                f"({record.pathname}:{record.lineno})"
            )
            context = f"during {self.current_test()}"
            self.findings.append(Finding(value, "log record", place, context))


def scan_text(matcher: PhiMatcher, text: str, source: str, context: str = "") -> list[Finding]:
    """Findings in a block of log text, located by line number (and `context`)."""
    findings = []
    place = "unformatted line"
    for number, line in enumerate(text.splitlines(), 1):
        # An `engine run` line starts with time, level and logger; the lines after it until
        # the next such line (a traceback, a value with line breaks) belong to its record.
        head = re.match(r"\d{4}-\d\d-\d\d \S+ ([A-Z]+) ([\w.]+): ", line)
        if head:
            place = f"logger {head.group(2)} {head.group(1)}"
        for value in matcher.find(line):
            where = f"line {number}" + (f" during {context}" if context else "")
            findings.append(Finding(value, source, place, where))
    return findings


def scan_files(matcher: PhiMatcher, root: Path, pattern: str = "*.log") -> list[Finding]:
    findings = []
    for path in sorted(root.rglob(pattern)):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            findings += scan_text(matcher, text, str(path.relative_to(root)))
    return findings


# --- the pytest plugin ------------------------------------------------------------------------


class PhiScanPlugin:
    """Registered by tests/conftest.py for every session: captures from session start, scans
    the session's log files at the end and fails the session on any finding."""

    def __init__(self, samples: Path) -> None:
        self.matcher = PhiMatcher(synthetic_phi(samples))
        self.test = "session setup"
        self.handler = ScanHandler(self.matcher, lambda: self.test)
        self.findings: list[Finding] = []
        self.basetemp: Path | None = None
        self.stderr_blocks = 0
        self._engine_level = logging.NOTSET
        self._restore: Callable[[], None] = lambda: None

    def pytest_sessionstart(self) -> None:
        engine = logging.getLogger("engine")
        self._engine_level = engine.level
        engine.setLevel(logging.DEBUG)
        engine.addHandler(self.handler)
        self._restore = self._hook_cli_stderr()

    def _hook_cli_stderr(self) -> Callable[[], None]:
        """Every `engine` command the integration tests run ends in a `Result` holding its
        stderr: scanning there catches each command's stderr, however the test imported
        the helper that ran it."""
        from tests.integration import cli_support

        original = cli_support.Result.__init__

        def init(result: Any, *args: Any, **kwargs: Any) -> None:
            original(result, *args, **kwargs)
            self.stderr_blocks += 1
            self.findings += scan_text(
                self.matcher, result.err, "engine command stderr", self.test
            )

        cli_support.Result.__init__ = init  # type: ignore[method-assign, assignment]

        def restore() -> None:
            cli_support.Result.__init__ = original  # type: ignore[method-assign]

        return restore

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.test = nodeid

    def pytest_runtest_logfinish(self) -> None:
        self.test = "between tests"

    def pytest_sessionfinish(self, session: Any) -> None:
        engine = logging.getLogger("engine")
        engine.removeHandler(self.handler)
        engine.setLevel(self._engine_level)
        self._restore()
        # `engine run` subprocesses log to files in the tests' tmp_path (engine.log).
        factory = getattr(session.config, "_tmp_path_factory", None)
        basetemp = getattr(factory, "_basetemp", None)
        if basetemp is not None:
            self.basetemp = Path(basetemp)
            self.findings += scan_files(self.matcher, self.basetemp)
        self.findings = self.handler.findings + self.findings
        if self.findings and session.exitstatus == 0:
            session.exitstatus = 1  # pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        files = 0 if self.basetemp is None else len(list(self.basetemp.rglob("*.log")))
        summary = (
            f"{len(self.matcher.values)} values from samples/; {self.handler.records} engine "
            f"log records, {self.stderr_blocks} engine command stderr blocks, {files} log files"
        )
        if not self.findings:
            terminalreporter.write_line(f"PHI scan: clean ({summary})")
            return
        terminalreporter.section("PHI found in logs", sep="=", red=True, bold=True)
        for line in report(self.findings):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"PHI scan: {len(self.findings)} findings ({summary})")
