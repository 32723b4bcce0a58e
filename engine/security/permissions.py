"""Who may do what: the one permission table of the engine, for HTTP routes and CLI commands.

Rules kept here:
- A role holds a set of permissions (`GRANTS`); a route or a command names the permissions
  that let a caller through (any one of them). Nothing else decides access: the HTTP listener
  dispatches only routes listed in `HTTP_ROUTES`, and the CLI checks `CLI_COMMANDS` before a
  command touches the store. A route or command missing from these tables is a test failure
  (tests/unit/security/test_permissions.py), so a new one cannot slip in unguarded.
- `admin` has everything (and always logs in with TOTP); `operator` (front desk) reads,
  searches, retries failed deliveries and cancels appointments (a change of status to
  cancelled and nothing else, which the FHIR intake checks against the stored version);
  `viewer` (providers) reads and searches; `system` (an EHR feed) sends messages and
  resources and reads nothing back from the store; `auditor` reads the audit trail only.
- `PUBLIC` routes need no credential (the CapabilityStatement, the SMART configuration, the
  token and login endpoints, the console's page and static files); `NO_PHI` commands touch
  no stored message (checking or testing configuration, the fakes, the benchmark, `engine
  run` itself, which is the service).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from engine.security.identities_store import ROLES


class Permission(StrEnum):
    SEND = "send"  # POST/PUT messages and resources into the engine
    CANCEL = "cancel"  # set an appointment's status to cancelled, nothing else
    READ = "read"  # one message or appointment
    SEARCH = "search"  # lists and searches of the store
    RETRY = "retry"  # retry (or discard) failed deliveries
    REPLAY = "replay"  # replay stored messages
    AUDIT = "audit"  # search and verify the audit trail
    IDENTITIES = "identities"  # users, API clients and keys
    KEYS = "keys"  # at-rest encryption keys
    CONFIGURE = "configure"  # reload the configuration
    STATUS = "status"  # channels, listeners and their counters (no PHI)
    SESSION = "session"  # end one's own session (any authenticated caller)


GRANTS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "operator": frozenset({Permission.READ, Permission.SEARCH, Permission.RETRY,
                           Permission.CANCEL, Permission.STATUS, Permission.SESSION}),
    "viewer": frozenset({Permission.READ, Permission.SEARCH, Permission.STATUS,
                         Permission.SESSION}),
    "system": frozenset({Permission.SEND, Permission.SESSION}),
    "auditor": frozenset({Permission.AUDIT, Permission.SESSION}),
}  # fmt: skip
assert set(GRANTS) == set(ROLES), "every stored role has its grants"

PUBLIC: tuple[Permission, ...] = ()  # a route anyone may call, with or without a credential
NO_PHI: tuple[Permission, ...] = ()  # a command that touches no stored message


def allowed(role: str, needs: tuple[Permission, ...]) -> bool:
    """True when `role` holds one of `needs` (an empty `needs` is PUBLIC / NO_PHI)."""
    if not needs:
        return True
    held = GRANTS.get(role, frozenset())
    return any(p in held for p in needs)


def only_cancel(role: str) -> bool:
    """An update by this role may only cancel: it can cancel but not send."""
    held = GRANTS.get(role, frozenset())
    return Permission.CANCEL in held and Permission.SEND not in held


@dataclass(frozen=True)
class Route:
    """One HTTP route: `path` is a template where `{base}` is the listener's FHIR base and
    `{id}` one path segment. `name` is what the listener binds its handler to."""

    name: str
    method: str
    path: str
    needs: tuple[Permission, ...]

    @property
    def public(self) -> bool:
        return not self.needs

    @property
    def service(self) -> str:
        """What serves it: `auth` (every HTTP listener), `fhir`, `admin` or `console` (the
        console is served with the admin API, on the listeners whose `serve:` names admin),
        from the name's first word."""
        head = self.name.split(".", 1)[0]
        if head in ("auth", "console"):
            return head
        return "fhir" if head in ("fhir", "smart") else "admin"


def served_routes(serve: Iterable[str]) -> list[Route]:
    """The routes of a listener whose `serve:` is `serve`: the credential routes on every
    one, the console wherever the admin API is."""
    services = {"auth", *serve}
    if "admin" in services:
        services.add("console")
    return [r for r in HTTP_ROUTES if r.service in services]


HTTP_ROUTES: tuple[Route, ...] = (
    Route("fhir.metadata", "GET", "{base}/metadata", PUBLIC),
    Route("smart.configuration", "GET", "{base}/.well-known/smart-configuration", PUBLIC),
    Route("auth.token", "POST", "/auth/token", PUBLIC),
    Route("auth.login", "POST", "/auth/login", PUBLIC),
    Route("auth.logout", "POST", "/auth/logout", (Permission.SESSION,)),
    Route("fhir.bundle", "POST", "{base}", (Permission.SEND,)),
    Route("fhir.create", "POST", "{base}/Appointment", (Permission.SEND,)),
    Route("fhir.update", "PUT", "{base}/Appointment/{id}", (Permission.SEND, Permission.CANCEL)),
    Route("fhir.read", "GET", "{base}/Appointment/{id}", (Permission.READ,)),
    # The admin API (engine.api.admin); its OpenAPI document describes exactly these.
    Route("api.openapi", "GET", "/api/openapi.json", PUBLIC),
    Route("api.me", "GET", "/api/me", (Permission.SESSION,)),
    Route("api.stats", "POST", "/api/stats", (Permission.STATUS,)),
    Route("api.channels", "GET", "/api/channels", (Permission.STATUS,)),
    Route("api.listeners", "GET", "/api/listeners", (Permission.STATUS,)),
    # Searches go by POST: a filter (a patient id) must not travel in a URL.
    Route("api.messages.search", "POST", "/api/messages/search", (Permission.SEARCH,)),
    Route("api.message", "GET", "/api/messages/{id}", (Permission.READ,)),
    Route("api.deliveries.failed", "GET", "/api/deliveries/failed", (Permission.READ,)),
    Route("api.deliveries.retry", "POST", "/api/deliveries/retry", (Permission.RETRY,)),
    Route("api.deliveries.discard", "POST", "/api/deliveries/discard", (Permission.RETRY,)),
    Route("api.replay", "POST", "/api/replay", (Permission.REPLAY,)),
    # Front-desk work, as a retry is: the conflict was seen and dealt with.
    Route("api.conflicts.resolve", "POST", "/api/conflicts/{id}/resolve", (Permission.RETRY,)),
    Route("api.audit.search", "POST", "/api/audit/search", (Permission.AUDIT,)),
    Route("api.config.reload", "POST", "/api/config/reload", (Permission.CONFIGURE,)),
    # Counters by configuration name only (no PHI), but volumes are the business's own:
    # a scraper holds a key of a role with STATUS. Health says ok or which check failed.
    Route("metrics", "GET", "/metrics", (Permission.STATUS,)),
    Route("health.live", "GET", "/health/live", PUBLIC),
    Route("health.ready", "GET", "/health/ready", PUBLIC),
    # The web console (engine.api.console): its page and static files hold no data (every
    # datum comes from /api with the caller's session), so anyone may load them.
    Route("console.page", "GET", "/console", PUBLIC),
    Route("console.asset", "GET", "/console/{id}", PUBLIC),
)

# Every CLI command, by its words (`"audit search"`). Subcommand groups list each verb.
CLI_COMMANDS: dict[str, tuple[Permission, ...]] = {
    "run": NO_PHI,  # the service itself, started by its service manager
    "check": NO_PHI,
    "test": NO_PHI,  # runs channel tests on the configuration's own fixtures
    "send": NO_PHI,  # a client of a listener, which authenticates it
    "bench": NO_PHI,
    "fake-ehr": NO_PHI,
    "fake-fhir": NO_PHI,
    "fake-webhooks": NO_PHI,
    "certs dev": NO_PHI,
    "login": NO_PHI,  # authenticates; the session it opens carries the role
    "logout": NO_PHI,
    "messages": (Permission.SEARCH,),
    "show": (Permission.READ,),
    "replay": (Permission.REPLAY,),
    "retry": (Permission.RETRY,),
    "audit verify": (Permission.AUDIT,),
    "audit search": (Permission.AUDIT,),
    "users add": (Permission.IDENTITIES,),
    "users list": (Permission.IDENTITIES,),
    "users disable": (Permission.IDENTITIES,),
    "users unlock": (Permission.IDENTITIES,),
    "apikeys create": (Permission.IDENTITIES,),
    "apikeys list": (Permission.IDENTITIES,),
    "apikeys rotate": (Permission.IDENTITIES,),
    "apikeys revoke": (Permission.IDENTITIES,),
    "apikeys unlock": (Permission.IDENTITIES,),
    "clients add": (Permission.IDENTITIES,),
    "clients list": (Permission.IDENTITIES,),
    "clients disable": (Permission.IDENTITIES,),
    "keys new": NO_PHI,  # prints a fresh random key; opens nothing
    "keys status": (Permission.KEYS,),
    "keys rotate": (Permission.KEYS,),
    "reload": (Permission.CONFIGURE,),
}
