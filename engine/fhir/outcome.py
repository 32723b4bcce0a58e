"""FHIR OperationOutcome: the `Issue` vocabulary, the `Invalid` error and the JSON builder.

Rule kept here: an issue's text never carries a value taken from the resource it describes
(no names, ids, dates); it may name elements (FHIRPath in `expression`) and the expected
codes or shapes. So an OperationOutcome can be logged, stored and returned as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Invalid", "Issue", "operation_outcome"]


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: `code` is a FHIR issue-type code (invalid, structure, ...)."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class Invalid(Exception):
    """A rejected request body: `status` is the HTTP status (400 or 422) to answer with."""

    def __init__(self, status: int, issues: Sequence[Issue]) -> None:
        if not issues:
            raise ValueError("Invalid needs at least one issue")
        self.status = status
        self.issues = tuple(issues)
        # The text is built from PHI-free diagnostics only, so the exception is safe to log.
        first = self.issues[0]
        where = f"{first.expression[0]}: " if first.expression else ""
        more = f" (+{len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"{status} {first.code}: {where}{first.diagnostics}{more}")

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome JSON to send back with `status`."""
        return operation_outcome(self.issues)


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """FHIR OperationOutcome JSON for `issues`; an empty list reads as "all OK".

    OperationOutcome.issue is 1..*, so an empty list becomes one informational issue
    (what a server returns for `Prefer: return=OperationOutcome` on success).
    """
    if not issues:
        issues = [Issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}
