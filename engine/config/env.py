"""`${NAME}` and `${NAME:-default}` in configuration text, and where secrets may come from.

References are resolved from the environment captured at load time, with shell semantics:
`${NAME:-default}` uses the default when NAME is unset or empty, `$${` writes a literal `${`.
The rule for secrets: the value of a key named like a secret (password, token, api_key, ...)
must be exactly one `${NAME}` reference, so no secret is ever written in a configuration file,
and no problem text ever repeats a secret's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SECRET_KEYS = frozenset(
    {"password", "secret", "token", "client_secret", "api_key", "private_key"}
)
_SECRET_SUFFIXES = ("_secret", "_token", "_password")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_BODY = re.compile(rf"^({_NAME})(?::-(.*))?$", re.DOTALL)
_SECRET_REF = re.compile(rf"^\$\{{{_NAME}\}}$")

SECRET_MESSAGE = "secrets must come from the environment: write ${NAME}"
# `scheme://user:password@host`: the password part is a secret wherever it is written.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:([^@/\s]*)@")


@dataclass(frozen=True)
class Substituted:
    text: str
    changed: bool  # whether any reference (or `$${` escape) was replaced
    errors: tuple[str, ...] = ()


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return (
        lowered in _SECRET_KEYS
        or lowered.endswith(_SECRET_SUFFIXES)
        or lowered.startswith("secret_")  # secret_next: the second secret of a rotation
    )


def is_secret_path(path: tuple[str | int, ...]) -> bool:
    """Values secret by their place rather than their key's name: the at-rest keys, whose
    names are key ids (`security: encryption: keys: {k2026a: ${ENGINE_KEY_K2026A}}`)."""
    return len(path) == 4 and path[:3] == ("security", "encryption", "keys")


def is_secret_reference(text: str) -> bool:
    """Exactly one `${NAME}`: no default (a default would be a secret written in the file)."""
    return _SECRET_REF.match(text) is not None


def has_literal_url_password(text: str) -> bool:
    """Whether `text` holds a URL whose password is written out rather than `${NAME}`."""
    return any(
        password and not is_secret_reference(password)
        for password in _URL_PASSWORD.findall(text)
    )


def substitute(text: str, environ: Mapping[str, str], *, show: bool = True) -> Substituted:
    """`text` with every reference resolved. Errors name the variable, never its value; with
    `show=False` (secrets) they do not quote the text either."""
    if "$" not in text:
        return Substituted(text, False)
    out: list[str] = []
    errors: list[str] = []
    last = 0
    for match in _TOKEN.finditer(text):
        out.append(text[last : match.start()])
        last = match.end()
        token = match.group(0)
        if token == "$${":
            out.append("${")
            continue
        body = match.group(1)
        parsed = _BODY.match(body) if body is not None else None
        if parsed is None:
            shown = f", got '{text}'" if show else ""
            errors.append(f"expected ${{NAME}} or ${{NAME:-default}}{shown}")
            continue
        name, default = parsed.group(1), parsed.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                errors.append(f"environment variable {name} is not set")
                continue
            value = default
        out.append(value)
    out.append(text[last:])
    return Substituted("".join(out), True, tuple(errors))
