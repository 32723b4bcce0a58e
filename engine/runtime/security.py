"""The security services a running engine holds, and what the production profile needs before
it starts.

- `Access` (API clients, tokens, sessions over the identity file) is opened when a listener
  requires authentication; the identity file is `security_file(store, "identities")`.
- The audit log (engine.security.audit_store.AuditLog) is opened when an audit key is
  configured ($ENGINE_AUDIT_KEY_FILE / $ENGINE_AUDIT_KEY).
- `refusals`: why the production profile must not start (no audit key, no at-rest keys); the
  development profile starts without them and says once what is off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from engine.config.model import EngineConfig
from engine.security.audit import Actor, AuditEvent, AuditKey, AuditKeyError
from engine.security.audit_store import AuditLog, AuditStore
from engine.security.identities import Identities, LockoutPolicy
from engine.security.identities_store import IdentityStore
from engine.security.locations import LocationError, security_file
from engine.security.tokens import Access
from engine.security.watch import AccessWatch, WatchPolicy

log = logging.getLogger("engine")


def needs_identities(config: EngineConfig) -> bool:
    return any(c.http is not None and c.http.auth == "required" for c in config.listeners.values())


def refusals(config: EngineConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """What keeps this configuration from starting under its profile (empty: it may start)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    if config.security.production:
        try:
            AuditKey.load(None, env)
        except AuditKeyError as exc:
            found.append(f"the production profile needs the audit trail: {exc}")
        if config.security.encryption is None:
            found.append(
                "the production profile needs at-rest encryption keys: configure security: "
                "encryption: {key_file: <file>, current: <key id>} (or keys: {<key id>: "
                "${ENV_VAR}}) in routes.yaml; `engine keys new --id <key id>` makes a key"
            )
    if needs_identities(config) or AuditKey.configured(env):
        for kind in ("identities", "audit"):
            try:
                security_file(config.store, kind, env)
            except LocationError as exc:
                found.append(str(exc))
    return found


class SecurityServices:
    """What the listeners check credentials against and record to; closed with the engine."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        identities: Identities | None = None,
        audit: AuditLog | None = None,
        lockout: LockoutPolicy | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._owned: list[IdentityStore | AuditLog] = []
        if identities is None and needs_identities(config):
            store = IdentityStore(security_file(config.store, "identities", env))
            self._owned.append(store)
            identities = Identities(
                store, lockout=lockout or LockoutPolicy.of(config.security.lockout)
            )
        self.access = Access(identities) if identities is not None else None
        if audit is None and AuditKey.configured(env):
            # Every read it records is watched for bursts and out-of-hours access.
            watch = AccessWatch(WatchPolicy.of(config.security.alerts))
            audit = AuditLog(AuditStore(security_file(config.store, "audit", env),
                                        AuditKey.load(None, env), watch=watch))  # fmt: skip
            self._owned.append(audit)
        self.audit_log = audit
        # Said once the engine has started (a failed start should say only why it failed).
        self.warnings: list[str] = []
        if not config.security.production:
            self.warnings.append("development profile: controls whose keys are missing are "
                                 "off; do not use it with real patient data")
        if config.security.encryption is None:
            self.warnings.append("no at-rest encryption keys (security.encryption): message "
                                 "bodies and patient ids are stored in clear")
        if audit is None:
            self.warnings.append("no audit key ($ENGINE_AUDIT_KEY_FILE / $ENGINE_AUDIT_KEY): "
                                 "reads, logins and operator changes over HTTP are not audited")

    async def audit(self, actor: Actor, event: AuditEvent) -> None:
        if self.audit_log is not None:
            await self.audit_log.record(actor, event)

    def close(self) -> None:
        for owned in self._owned:
            owned.close()
        self._owned.clear()
