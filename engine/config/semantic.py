"""Rules a schema cannot express: field paths parse, regexes compile, one test per filter
condition, routes name existing listeners and channels, every listener is routed, destination
names are unique across channels, channel tests name existing inputs and destinations and
expect field paths (HL7 v2 output) or element paths (JSON output), an HTTP listener's
`rate_limit.per_client` has client identities to count by.

Functions here take already schema-checked data and stay defensive about shapes (the schema
problem was reported; a second one about the same node would be noise). Where a rule builds
a model object as it checks (filter conditions, channel tests), it returns it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import (
    DEFAULT_SERVE,
    ChannelTest,
    ClientTls,
    Condition,
    ListenerConfig,
    ListenerTls,
    Pos,
    RateLimit,
)
from engine.config.schema import COMBINATORS, FIELD_TESTS
from engine.config.yaml_nodes import Doc, KeyPath

_CONDITION_KEYS = frozenset({"field", *FIELD_TESTS, *COMBINATORS})


def _listing(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def path_problem(text: str, pos: Pos) -> ConfigProblem | None:
    """A problem when `text` is not an ER7 field path such as `SCH-7.1`."""
    from engine.protocol.er7 import PathError, parse_path

    try:
        parse_path(text)
    except PathError as exc:
        return ConfigProblem(pos, f"expected a field path: {exc}")
    return None


def field_or_element_problem(text: str, pos: Pos) -> ConfigProblem | None:
    """A problem when `text` is neither an ER7 field path (`SCH-7.1`, for HL7 v2 documents)
    nor an element path (`participant.0.actor.reference`, for JSON documents)."""
    from engine.pipeline.elements import is_element_path

    found = path_problem(text, pos)
    if found is None or is_element_path(text):
        return None
    if text[:1].islower() and "-" not in text:  # meant as an element path
        return ConfigProblem(
            pos,
            "expected an element path like participant.0.actor.reference (names and 0-based "
            f"indices joined by dots) or a field path like SCH-7.1, got '{text}'",
        )
    return found


def filter_condition(doc: Doc, value: Any, problems: list[ConfigProblem]) -> Condition | None:
    """The channel's filter as one tree: a list means all of its conditions."""
    path: KeyPath = ("filter",)
    if isinstance(value, list):
        children = [condition(doc, item, (*path, i), problems) for i, item in enumerate(value)]
        if not value:
            return None
        kept = tuple(c for c in children if c is not None)
        return Condition("all", doc.at(path), children=kept)
    return condition(doc, value, path, problems)


def condition(
    doc: Doc, value: Any, path: KeyPath, problems: list[ConfigProblem]
) -> Condition | None:
    if not isinstance(value, dict) or not set(value) <= _CONDITION_KEYS:
        return None  # the channel schema reported it; guessing the intent would add noise
    pos = doc.at(path)
    tests = [k for k in FIELD_TESTS if k in value]
    combinators = [k for k in COMBINATORS if k in value]
    if "field" in value:
        if combinators:
            problems.append(ConfigProblem(
                doc.key_at((*path, combinators[0])),
                f"'{combinators[0]}' cannot sit beside a field test; put it in its own condition",
            ))
        if not tests:
            problems.append(ConfigProblem(
                pos, f"expected one test for the field: one of {', '.join(FIELD_TESTS)}"
            ))
            return None
        if len(tests) > 1:
            problems.append(ConfigProblem(
                doc.key_at((*path, tests[1])),
                f"expected exactly one test per condition, got {tests[0]} and {tests[1]}",
            ))
            return None
        return _field_test(doc, value, path, tests[0], problems)
    if tests:
        problems.append(ConfigProblem(
            doc.key_at((*path, tests[0])), f"'{tests[0]}' needs a field, like field: PID-8"
        ))
        return None
    if len(combinators) != 1:
        got = " and ".join(combinators) if combinators else "neither"
        problems.append(ConfigProblem(
            pos, f"expected a field test or exactly one of {', '.join(COMBINATORS)}, got {got}"
        ))
        return None
    op = combinators[0]
    if op == "not":
        child = condition(doc, value["not"], (*path, "not"), problems)
        return Condition("not", pos, children=(child,)) if child is not None else None
    items = value[op] if isinstance(value[op], list) else []
    children = [condition(doc, item, (*path, op, i), problems) for i, item in enumerate(items)]
    return Condition(op, pos, children=tuple(c for c in children if c is not None))


def _field_test(
    doc: Doc, value: dict[str, Any], path: KeyPath, op: str, problems: list[ConfigProblem]
) -> Condition | None:
    field = value["field"]
    if not isinstance(field, str):
        return None
    found = path_problem(field, doc.at((*path, "field")))
    if found is not None:
        problems.append(found)
    argument = value[op]
    test_path = (*path, op)
    # Message fields are text: compare with the value as written (`01` stays "01").
    if op == "equals":
        argument = doc.texts.get(test_path, str(argument))
    elif op in ("in", "not_in") and isinstance(argument, list):
        argument = tuple(doc.texts.get((*test_path, i), str(a)) for i, a in enumerate(argument))
    elif op == "matches" and isinstance(argument, str):
        try:
            re.compile(argument)
        except re.error as exc:
            problems.append(ConfigProblem(
                doc.at(test_path), f"expected a regular expression: {exc}"
            ))
            return None
    return Condition(op, doc.at(path), field=field, value=argument)


def channel_tests(
    doc: Doc, value: Any, destinations: set[str], problems: list[ConfigProblem]
) -> list[ChannelTest]:
    """The channel's `tests:`; each names an existing input and this channel's destinations."""
    out: list[ChannelTest] = []
    seen: dict[str, Pos] = {}
    for i, test in enumerate(value if isinstance(value, list) else []):
        path: KeyPath = ("tests", i)
        if not isinstance(test, dict) or not isinstance(test.get("name"), str):
            continue
        name = test["name"]
        if name in seen:
            problems.append(ConfigProblem(
                doc.at((*path, "name")),
                f"duplicate test name '{name}' (first at line {seen[name].line})",
            ))
        seen.setdefault(name, doc.at((*path, "name")))
        before = len(problems)
        source = test.get("input")
        previous = test.get("previous")
        for key, file in (("input", source), ("previous", previous)):
            if isinstance(file, str) and not Path(file).is_file():
                written = doc.texts.get((*path, key), file)
                problems.append(ConfigProblem(
                    doc.at((*path, key)), f"test {key} '{written}' does not exist"
                ))
        expect = test.get("expect") if isinstance(test.get("expect"), dict) else {}
        assert isinstance(expect, dict)
        outcome = test.get("outcome")
        if expect and outcome in ("filtered", "error"):
            problems.append(ConfigProblem(
                doc.key_at((*path, "expect")),
                f"a test with outcome {outcome} cannot expect destination content",
            ))
        if not expect and outcome is None:
            problems.append(ConfigProblem(
                doc.at(path), "expected 'expect' or 'outcome' in a channel test"
            ))
        fields = _expectations(doc, path, expect, destinations, problems)
        if len(problems) == before and isinstance(source, str):
            out.append(ChannelTest(
                name=name, input=Path(source), pos=doc.at(path), expect=fields,
                outcome=outcome if outcome is not None else ("delivered" if expect else None),
                previous=Path(previous) if isinstance(previous, str) else None,
            ))
    return out


def _expectations(
    doc: Doc, path: KeyPath, expect: dict[str, Any], destinations: set[str],
    problems: list[ConfigProblem],
) -> dict[str, dict[str, str]]:
    fields: dict[str, dict[str, str]] = {}
    for dest, values in expect.items():
        dest_path = (*path, "expect", dest)
        if dest not in destinations:
            problems.append(ConfigProblem(
                doc.key_at(dest_path),
                f"destination '{dest}' is not in this channel "
                f"(destinations: {_listing(destinations)})",
            ))
        if not isinstance(values, dict):
            continue
        for field in values:
            found = field_or_element_problem(field, doc.key_at((*dest_path, field)))
            if found is not None:
                problems.append(found)
        fields[dest] = {f: doc.texts.get((*dest_path, f), str(v)) for f, v in values.items()}
    return fields


def routes(
    doc: Doc, listeners: Mapping[str, Any], routing: Mapping[str, Any], channels: set[str],
    problems: list[ConfigProblem],
) -> None:
    """Routes name existing listeners and channels, once each; every listener that takes
    messages has a route, and one that takes none (an HTTP listener serving only `admin`)
    has none."""
    for listener, names in routing.items():
        if listener not in listeners:
            problems.append(ConfigProblem(
                doc.key_at(("routes", listener)),
                f"listener '{listener}' does not exist (listeners: {_listing(listeners)})",
            ))
        elif not _takes_messages(listeners[listener]):
            problems.append(ConfigProblem(
                doc.key_at(("routes", listener)),
                f"listener '{listener}' serves only admin: it takes no messages, so it has no "
                "route (add fhir to its serve: list, or remove this entry)",
            ))
        seen: set[str] = set()
        for i, name in enumerate(names if isinstance(names, list) else []):
            if not isinstance(name, str):
                continue
            where = doc.at(("routes", listener, i))
            if name not in channels:
                problems.append(ConfigProblem(
                    where, f"channel '{name}' does not exist (channels: {_listing(channels)})"
                ))
            elif name in seen:
                problems.append(ConfigProblem(
                    where, f"channel '{name}' is listed twice for listener '{listener}'"
                ))
            seen.add(name)
    for listener in listeners:
        if listener not in routing and _takes_messages(listeners[listener]):
            problems.append(ConfigProblem(
                doc.key_at(("listeners", listener)),
                f"listener '{listener}' has no route (expected an entry '{listener}: "
                "[<channel>, ...]' under routes)",
            ))


def _takes_messages(spec: Any) -> bool:
    """An MLLP listener, or an HTTP one serving fhir (the default)."""
    http = spec.get("http") if isinstance(spec, dict) else None
    if not isinstance(http, dict):
        return True
    serve = http.get("serve", DEFAULT_SERVE)
    return not isinstance(serve, (list, tuple)) or "fhir" in serve


def listener_ports(listeners: Iterable[ListenerConfig], problems: list[ConfigProblem]) -> None:
    """Two listeners cannot bind the same host and port."""
    taken: dict[tuple[str, int], str] = {}
    for listener in listeners:
        address = listener.address
        if address in taken:
            problems.append(ConfigProblem(
                listener.pos,
                f"port {address[1]} on {address[0]} is already used by listener "
                f"'{taken[address]}'",
            ))
        taken.setdefault(address, listener.name)


def unique_destinations(
    destinations: Iterable[tuple[str, str, Pos]], problems: list[ConfigProblem]
) -> None:
    """Destination names, given as (channel, name, position), are global: they key delivery
    queues and the console, so a second definition anywhere is a problem."""
    first: dict[str, tuple[str, Pos]] = {}
    for channel, name, where in destinations:
        if name in first:
            other, pos = first[name]
            problems.append(ConfigProblem(
                where,
                f"destination '{name}' is already defined in channel '{other}' "
                f"({pos.file.name}:{pos.line}:{pos.column}); destination names must be unique",
            ))
        first.setdefault(name, (channel, where))


def listener_tls(
    doc: Doc, path: KeyPath, block: Mapping[str, Any], problems: list[ConfigProblem]
) -> ListenerTls | None:
    """The `tls:` of a listener block (`path` is `listeners.<name>.<mllp|http>`), loaded as
    the listener will load it so that a missing or unusable file is a problem at its option.
    The transport rule: no `tls` on a non-loopback host needs `plain: allow`, and `plain`
    beside `tls` contradicts it."""
    from engine.security.tls import TlsConfigError, is_loopback, server_context

    spec = block.get("tls")
    plain = block.get("plain")
    host = str(block.get("host", "127.0.0.1"))
    if spec is None:
        if plain is None and not is_loopback(host):
            problems.append(ConfigProblem(
                doc.key_at(path),
                f"a listener on {host} (not loopback) needs tls: {{cert, key}}; to accept "
                "unencrypted connections from the network say plain: allow",
            ))
        return None
    if plain is not None:
        problems.append(ConfigProblem(
            doc.key_at((*path, "plain")), "plain: allow contradicts tls: remove one of them"
        ))
    tls = ListenerTls(
        cert=spec["cert"], key=spec["key"], client_ca=spec.get("client_ca"),
        allow=tuple(spec.get("allow", ())),
    )
    try:
        server_context(tls)
    except TlsConfigError as exc:
        problems.append(ConfigProblem(_tls_option_pos(doc, (*path, "tls"), spec, exc.option),
                                      exc.message))
    return tls


def client_tls(
    spec: Mapping[str, Any], at: Any, problems: list[ConfigProblem]
) -> ClientTls:
    """A destination's `tls:` (schema-checked), its files loaded as the destination will load
    them; `at(("tls", "ca"))` positions a problem."""
    from engine.security.tls import TlsConfigError, client_context

    tls = ClientTls(ca=spec.get("ca"), cert=spec.get("cert"), key=spec.get("key"),
                    verify=bool(spec.get("verify", True)))
    try:
        # Quietly: the warning about verify: false belongs to start-up, not to a check.
        client_context(ClientTls(tls.ca, tls.cert, tls.key, True))
    except TlsConfigError as exc:
        where: tuple[str | int, ...] = ("tls", exc.option) if exc.option in spec else ("tls",)
        problems.append(ConfigProblem(at(where), exc.message))
    return tls


def _tls_option_pos(doc: Doc, path: KeyPath, spec: Mapping[str, Any], option: str) -> Pos:
    if option.startswith("allow["):
        return doc.at((*path, "allow", int(option[6:-1])))
    return doc.at((*path, option)) if option in spec else doc.at(path)


def rate_limit(
    doc: Doc, path: KeyPath, block: Mapping[str, Any], problems: list[ConfigProblem]
) -> RateLimit | None:
    """The `rate_limit:` of an HTTP listener block (`path` is `listeners.<name>.http`); None
    when absent (no limit). `per_client` counts by client identity, which today is a verified
    client certificate: without `tls.client_ca` it would never apply, so it is a problem."""
    from engine.security.ratelimit import parse_rate

    spec = block.get("rate_limit")
    if not isinstance(spec, Mapping):
        return None
    rates = {}
    for option in ("per_ip", "per_client"):
        text = spec.get(option)
        if not isinstance(text, str):
            continue
        try:
            rates[option] = parse_rate(text)
        except ValueError as exc:  # the schema's pattern reported it first; kept as a guard
            problems.append(ConfigProblem(doc.at((*path, "rate_limit", option)), str(exc)))
    tls = block.get("tls")
    if "per_client" in rates and not (isinstance(tls, Mapping) and tls.get("client_ca")):
        problems.append(ConfigProblem(
            doc.key_at((*path, "rate_limit", "per_client")),
            "per_client counts requests by client identity, which needs client certificates "
            "(tls: {client_ca: ...}); without them use per_ip",
        ))
    return RateLimit(per_ip=rates.get("per_ip"), per_client=rates.get("per_client"))
