"""The JSON Schemas (Draft 2020-12) of routes.yaml, channel files and mapping tables.

They describe structure only; rules that need other files (a route names a channel, a test
expects a destination of its channel) live in `semantic.py`. Every object schema sets
`additionalProperties: false`, so a misspelt key is an error, never silently ignored.
Extensions understood by `validation.py`: `x-unit` (duration, size or path; see `units.py`)
and `x-expected`, the words used in "expected ..." when a value does not fit the node.
Steps and destination types are not described here: each list item or destination entry is
checked against the plugin registries, whose schemas are their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.config.units import DURATION, PATH, SIZE
from engine.security.atrest import KEY_ID_PATTERN

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME: dict[str, Any] = {
    "type": "string",
    "pattern": NAME_PATTERN,
    "x-expected": "a name made of letters, digits, '_' and '-'",
}
PORT: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": 65535,
    "x-expected": "a port number 1..65535",
}
ACK_POLICIES = ("commit", "processed", "delivered")
OUTCOMES = ("delivered", "filtered", "error")
FIELD_TESTS = ("equals", "in", "not_in", "exists", "matches")
COMBINATORS = ("all", "any", "not")

_POSITIVE_DURATION: dict[str, Any] = {"x-unit": DURATION, "exclusiveMinimum": 0}
_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_SCALARS: dict[str, Any] = {"type": "array", "minItems": 1, "items": _SCALAR}
# HL7 v2 types as "SIU^S12"; FHIR resources by resource type (the HTTP listener's input).
FHIR_TYPES = ("Appointment",)
_MESSAGE_TYPE: dict[str, Any] = {
    "type": "string",
    "pattern": r"^([A-Z0-9]{3}\^[A-Z0-9]{2,3}|" + "|".join(FHIR_TYPES) + ")$",
    "x-expected": "a message type like SIU^S12, or Appointment (FHIR)",
}


def _closed(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _one_or_list(item: dict[str, Any], **list_rules: Any) -> dict[str, Any]:
    """A single item or a list of them; if/then/else keeps errors pointing at the item."""
    return {
        "type": ["object", "array"] if item.get("type") == "object" else [item["type"], "array"],
        "if": {"type": "array"},
        "then": {"items": item, **list_rules},
        "else": item,
    }


_PEM_PATH: dict[str, Any] = {"x-unit": PATH, "type": "string", "minLength": 1}

# `tls:` of a listener; its files are loaded by the loader (engine.security.tls), which
# reports a missing or unusable one at its option.
LISTENER_TLS = _closed(
    {
        "cert": _PEM_PATH,
        "key": _PEM_PATH,
        "client_ca": _PEM_PATH,
        "allow": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "string",
                "minLength": 1,
                "x-expected": "a SHA-256 fingerprint, CN=<name> or an RFC 4514 subject",
            },
        },
    },
    required=["cert", "key"],
)

# `tls:` of a destination (mllp, fhir, webhook).
CLIENT_TLS = _closed(
    {
        "ca": _PEM_PATH,
        "cert": _PEM_PATH,
        "key": _PEM_PATH,
        "verify": {"type": "boolean"},
    },
)

# A listener without TLS on a non-loopback host must say `plain: allow` (loader rule).
_PLAIN: dict[str, Any] = {
    "enum": ["allow"],
    "x-expected": "allow (a listener without tls: on a non-loopback host)",
}

MLLP_LISTENER = _closed(
    {
        "port": PORT,
        "tls": LISTENER_TLS,
        "plain": _PLAIN,
        "host": {"type": "string", "minLength": 1},
        "max_message_bytes": {"x-unit": SIZE, "minimum": 1},
        "idle_timeout": _POSITIVE_DURATION,
        "max_connections": {"type": "integer", "minimum": 1},
    },
    required=["port"],
)

# `rate_limit:` of an HTTP listener (engine.security.ratelimit); absent = no limit. The
# pattern is RATE_PATTERN there, written out here to keep this module free of the runtime.
_RATE: dict[str, Any] = {
    "type": "string",
    "pattern": "^[1-9][0-9]{0,8}/(second|minute|hour)$",
    "x-expected": "a rate like 100/hour: a whole number of requests per second, minute or hour",
}
RATE_LIMIT = _closed({"per_ip": _RATE, "per_client": _RATE}) | {
    "minProperties": 1,
    "x-expected": "per_ip and/or per_client, like {per_ip: 100/hour}",
}

HTTP_LISTENER = _closed(
    {
        "port": PORT,
        "tls": LISTENER_TLS,
        "plain": _PLAIN,
        "host": {"type": "string", "minLength": 1},
        "path": {
            "type": "string",
            "pattern": "^(/[A-Za-z0-9._~-]+)*/?$",
            "x-expected": "a URL path like /fhir",
        },
        "max_body_bytes": {"x-unit": SIZE, "minimum": 1},
        "max_connections": {"type": "integer", "minimum": 1},
        "rate_limit": RATE_LIMIT,
        "auth": {
            "enum": ["required", "none"],
            "x-expected": "required (the default) or none (development profile only)",
        },
        "serve": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["fhir", "admin"]},
            "x-expected": "a list of fhir (the FHIR API, the default) and/or admin (the admin "
            "API and console, /metrics and /health)",
        },
    },
    required=["port"],
)

# Exactly one of mllp / http: the loader says so (a schema oneOf would report both branches).
LISTENER = _closed(
    {
        "mllp": MLLP_LISTENER,
        "http": HTTP_LISTENER,
        "ack": {"enum": list(ACK_POLICIES)},
        "ack_timeout": _POSITIVE_DURATION,
    },
)

_KEY_ID: dict[str, Any] = {
    "type": "string",
    "pattern": KEY_ID_PATTERN,
    "x-expected": "a key id of 1-32 letters, digits, '_', '.' or '-' (not starting with one"
    " of '_.-')",
}
# `security.encryption:` (engine.config.encryption): keys from a key file and/or the
# environment (each value a `${NAME}`: the YAML reader treats them as secrets).
ENCRYPTION = _closed(
    {
        "key_file": {"x-unit": PATH, "type": "string", "minLength": 1},
        "keys": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": _KEY_ID,
            "additionalProperties": {
                "type": "string",
                "x-expected": "${NAME}: an environment variable holding the base64 key",
            },
        },
        "current": _KEY_ID,
    },
    required=["current"],
) | {"anyOf": [{"required": ["key_file"]}, {"required": ["keys"]}],
     "x-expected": "key_file: and/or keys:, and current: naming the key new values use"}

# `security:` of routes.yaml (engine.config.model.SecurityConfig).
_CLOCK_TIME: dict[str, Any] = {
    "type": "string",
    "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
    "x-expected": "a time of day as HH:MM, like 07:00",
}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LOCKOUT = _closed(
    {
        "failures": {
            "type": "integer",
            "minimum": 1,
            "x-expected": "a number of failed attempts, at least 1",
        },
        "window": _POSITIVE_DURATION,
        "lock_for": _POSITIVE_DURATION,
    }
)
ALERT_WEBHOOK = _closed(
    {
        "url": {
            "type": "string",
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]://[^/?#]",
            "x-expected": "an https:// URL (alerts leave the host only over TLS)",
        },
        "secret": {
            "type": "string",
            "minLength": 1,
            "x-expected": "a webhook secret whsec_<base64>, from ${NAME}",
        },
        "tls": CLIENT_TLS,
    },
    required=["url", "secret"],
)
ALERTS = _closed(
    {
        "webhook": ALERT_WEBHOOK,
        "burst": _closed(
            {
                "reads": {
                    "type": "integer",
                    "minimum": 1,
                    "x-expected": "a number of reads, at least 1",
                },
                "within": _POSITIVE_DURATION,
            }
        ),
        "hours": _closed(
            {
                "from": _CLOCK_TIME,
                "to": _CLOCK_TIME,
                "days": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": list(WEEKDAYS)},
                    "x-expected": "a list of days like [mon, tue, wed, thu, fri]",
                },
            },
            required=["from", "to"],
        ),
    }
)
SECURITY = _closed(
    {
        "profile": {"enum": ["production", "development"]},
        "lockout": LOCKOUT,
        "alerts": ALERTS,
        "encryption": ENCRYPTION,
    }
)

# `reload:` of routes.yaml (engine.runtime.reload_watch): watching is off unless written.
RELOAD = _closed(
    {
        "watch": {"type": "boolean"},
        "interval": _POSITIVE_DURATION,
    }
)

ROUTES = _closed(
    {
        "store": {"type": "string", "minLength": 1},
        # Checked against SECURITY on its own (engine.config.security), so the commands
        # that read only routes.yaml's security settings report the same problems.
        "security": {"type": "object", "x-expected": "a mapping like {profile: production}"},
        "timezone": {
            "type": "string",
            "minLength": 1,
            "x-expected": "an IANA time zone like Europe/Berlin or UTC",
        },
        "listeners": {
            "type": "object",
            "minProperties": 1,
            "x-expected": "at least one listener, like epic-siu: {mllp: {port: 2575}}",
            "propertyNames": NAME,
            # Each listener is checked against LISTENER on its own, so one bad listener
            # does not hide the port conflicts or routes of the others.
            "additionalProperties": {"type": "object"},
        },
        "routes": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "minLength": 1},
            },
        },
        "reload": RELOAD,
    },
    required=["listeners", "routes"],
)

RETRY = _closed(
    {
        "attempts": {"type": "integer", "minimum": 1},
        "backoff": {"enum": ["exponential"]},
        "first": _POSITIVE_DURATION,
        "max": _POSITIVE_DURATION,
        "factor": {"type": "number", "minimum": 1},
        "jitter": {"type": "number", "minimum": 0, "maximum": 1},
    }
)

_CONDITION_REF: dict[str, Any] = {"$ref": "#/$defs/condition"}

CONDITION = _closed(
    {
        "field": {"type": "string"},
        "equals": _SCALAR,
        "in": _SCALARS,
        "not_in": _SCALARS,
        "exists": {"type": "boolean"},
        "matches": {"type": "string"},
        "all": {"type": "array", "minItems": 1, "items": _CONDITION_REF},
        "any": {"type": "array", "minItems": 1, "items": _CONDITION_REF},
        "not": _CONDITION_REF,
    }
)

CHANNEL_TEST = _closed(
    {
        "name": {"type": "string", "minLength": 1},
        "input": {"x-unit": PATH, "type": "string", "minLength": 1},
        # The appointment's earlier version, as the engine would hold it (S13/S14 triggers).
        "previous": {"x-unit": PATH, "type": "string", "minLength": 1},
        "expect": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": _SCALAR},
        },
        "outcome": {"enum": list(OUTCOMES)},
    },
    required=["name", "input"],
)

CHANNEL: dict[str, Any] = _closed(
    {
        "description": {"type": "string"},
        "accept": _closed({"type": _one_or_list(_MESSAGE_TYPE, minItems=1)}),
        "filter": _one_or_list(_CONDITION_REF | {"type": "object"}),
        "steps": {
            "type": "array",
            "items": {"type": "object", "x-expected": "a step like {set: {MSH-5: VALUE}}"},
        },
        "destinations": {
            "type": "object",
            "propertyNames": NAME,
            "additionalProperties": {"type": "object"},
        },
        "dedupe": _closed({"window": {"x-unit": DURATION}}),
        "conflicts": {"enum": ["flag", "reject"]},
        "tests": {"type": "array", "items": CHANNEL_TEST},
    }
) | {"$defs": {"condition": CONDITION}}

TABLE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "x-expected": "a row: a mapping of column -> value",
        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
    },
}


def destination_entry(types: Iterable[str]) -> dict[str, Any]:
    """A destination entry: the registered type keys (their arguments are checked against
    each plugin's own schema), `retry` and `order_by`."""
    properties: dict[str, Any] = {name: {} for name in types}
    properties["retry"] = RETRY
    properties["order_by"] = {"type": "string"}
    return _closed(properties)
