"""`security: {lockout, alerts}` of routes.yaml: defaults, typed values, and problems at
file:line:column, read by `routes_security` (routes.yaml alone) as `load` reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.errors import ConfigError
from engine.config.model import AccessHours, BurstWatch, LockoutConfig
from engine.config.security import routes_security
from engine.security.identities import LockoutPolicy
from engine.webhooks import WebhookSecret

SECRET = str(WebhookSecret.generate())


def routes(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        routes_security(path, environ or {})
    return [f"{p.pos.line}:{p.pos.column}: {p.message}" for p in caught.value.problems]


def test_defaults_without_a_security_block(tmp_path: Path):
    config = routes_security(routes(tmp_path, "store: sqlite:x.db\n"), {})
    assert config.lockout == LockoutConfig()
    assert LockoutPolicy.of(config.lockout) == LockoutPolicy()
    assert config.alerts.burst == BurstWatch(reads=50, within=30.0)
    assert config.alerts.hours is None and config.alerts.webhook is None


def test_written_settings_are_typed(tmp_path: Path):
    path = routes(tmp_path, """\
timezone: Europe/Berlin
security:
  lockout: {failures: 2, window: 5m, lock_for: 1h}
  alerts:
    webhook: {url: "https://alerts.example.org/hook", secret: "${ALERT_WEBHOOK_SECRET}"}
    burst: {reads: 10, within: 1m}
    hours: {from: "07:00", to: "19:30", days: [fri, mon]}
listeners: {}
""")
    config = routes_security(path, {"ALERT_WEBHOOK_SECRET": SECRET})
    assert LockoutPolicy.of(config.lockout) == LockoutPolicy(2, 300.0, 3600.0)
    assert config.alerts.burst == BurstWatch(10, 60.0)
    assert config.alerts.hours == AccessHours(420, 1170, (0, 4), "Europe/Berlin")
    assert config.alerts.webhook is not None
    assert config.alerts.webhook.secret == SECRET


def test_problems_name_file_line_and_column(tmp_path: Path):
    path = routes(tmp_path, """\
security:
  lockout: {failures: 0, window: soon}
  alerts:
    webhook: {url: "http://alerts.example.org/hook", secret: "${ALERT_WEBHOOK_SECRET}"}
    burst: {reads: 10, within: 1m, per: user}
    hours: {from: "7:00", to: "19:00", days: [monday]}
""")
    assert problems(path, {"ALERT_WEBHOOK_SECRET": SECRET}) == [
        "2:23: expected a number of failed attempts, at least 1, got 0",
        "2:34: expected a duration like 500ms, 30s, 5m, 24h or 1d (or a number of seconds), "
        "got 'soon'",
        "4:20: expected an https:// URL (alerts leave the host only over TLS), got "
        "'http://alerts.example.org/hook'",
        "5:36: unknown key 'per' (expected one of: reads, within)",
        "6:19: expected a time of day as HH:MM, like 07:00, got '7:00'",
        "6:47: expected one of mon, tue, wed, thu, fri, sat, sun, got 'monday'",
    ]


def test_a_bad_secret_an_unset_one_and_an_empty_range(tmp_path: Path):
    path = routes(tmp_path, """\
security:
  alerts:
    webhook: {url: "https://alerts.example.org/", secret: "${ALERT_WEBHOOK_SECRET}"}
    hours: {from: "08:00", to: "08:00"}
""")
    found = problems(path, {"ALERT_WEBHOOK_SECRET": "not-a-secret"})
    assert len(found) == 2
    assert found[0] == "3:59: webhook secret must start with 'whsec_' followed by base64"
    assert found[1].startswith("4:32: expected a time other than from:")
    assert problems(path, {})[0] == "3:59: environment variable ALERT_WEBHOOK_SECRET is not set"


def test_problems_elsewhere_in_routes_yaml_do_not_stop_these_settings(tmp_path: Path):
    path = routes(tmp_path, "listeners:\n  a: {mllp: {port: '${PORT}'}}\nsecurity:\n"
                            "  lockout: {failures: 3}\n")
    assert routes_security(path, {}).lockout.failures == 3
