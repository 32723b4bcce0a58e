"""No value from the request body may appear in any diagnostics, exception text or outcome."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.fhir import Invalid, operation_outcome, parse_appointment
from tests.unit.fhir.appointments import appointment, body

MARK = "ZQX"  # every value below carries this prefix; no diagnostics text contains it


def marked(n: int) -> str:
    return f"{MARK}{n:04d}"


def marker_resource() -> dict[str, Any]:
    """An Appointment that breaks many rules and whose every value is a unique marker."""
    return appointment(
        id=marked(1) + "!",  # bad id pattern
        identifier=[{"system": marked(2), "period": {"start": marked(3)}}],  # no value
        status=marked(4),
        start=marked(5),
        end="2000-01-01T00:00:00Z",
        minutesDuration=marked(6),
        priority=marked(7),
        comment=marked(8),
        description=[marked(9)],
        created=marked(10),
        contained=[{"resourceType": marked(11)}],
        basedOn={"reference": marked(12)},
        participant=[
            {"actor": {"reference": marked(13), "display": marked(14)}, "status": marked(15)},
            {"actor": marked(16), "status": "accepted"},
            marked(17),
            {"status": "accepted", "period": {"end": marked(18)}},
        ],
        requestedPeriod=[{"start": marked(19), "end": marked(20)}],
        cancelationReason={"text": marked(21)},
        modifierExtension=[{"url": marked(22), "valueString": marked(23), "valueInteger": 1}],
    )


def rendered(exc: Invalid) -> str:
    return str(exc) + json.dumps(operation_outcome(exc.issues)) + repr(exc.issues)


def test_marker_values_never_appear_in_the_outcome() -> None:
    raw = body(marker_resource())
    try:
        parse_appointment(raw)
    except Invalid as exc:
        assert exc.status == 422
        assert len(exc.issues) >= 10  # the resource really did trip many checks
        assert MARK not in rendered(exc)
    else:
        raise AssertionError("the marker resource must be rejected")


def test_marker_values_never_appear_in_400_answers() -> None:
    for raw in (
        marked(1).encode(),
        json.dumps([marked(2)]).encode(),
        json.dumps({"resourceType": marked(3)}).encode(),
        b'{"resourceType": "Appointment", "' + marked(4).encode() + b'": }',
    ):
        try:
            parse_appointment(raw)
        except Invalid as exc:
            assert exc.status == 400
            assert MARK not in rendered(exc)
        else:
            raise AssertionError("must be rejected")


_scalar = st.one_of(
    st.text(alphabet="ZQX0123456789 -:T", min_size=1, max_size=12).map(lambda s: MARK + s),
    st.integers(),
    st.booleans(),
    st.none(),
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["reference", "value", "start", "end", "status", "actor", "text"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
_element = st.sampled_from(
    [
        "status",
        "start",
        "end",
        "identifier",
        "participant",
        "comment",
        "minutesDuration",
        "contained",
        "reasonCode",
        "serviceType",
        "cancelationReason",
        "id",
        "meta",
        "slot",
    ]
)


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.dictionaries(_element, _json, min_size=1, max_size=4))
def test_any_mutation_is_accepted_or_rejected_cleanly_without_echo(changes: dict[str, Any]) -> None:
    resource = appointment()
    resource.update(changes)  # None stays as an explicit null: FHIR JSON forbids those too
    try:
        parse_appointment(body(resource))
    except Invalid as exc:
        assert exc.status == 422
        text = rendered(exc)
        assert MARK not in text
