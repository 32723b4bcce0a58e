"""`${NAME}` and `${NAME:-default}` resolution, and secrets that must come from the environment."""

from __future__ import annotations

import pytest

from engine.config.env import substitute
from tests.unit.config.support import ConfigDir

DEST = "destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}\n"


def test_reference_with_value_set(cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZZ_EHR_HOST", "ehr-7.test")
    monkeypatch.setenv("ZZ_EHR_PORT", "7001")
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp:
              host: ${ZZ_EHR_HOST}
              port: ${ZZ_EHR_PORT}
        """)
    options = cfg.load().channels["siu-to-clinic-ehr"].destinations[0].options
    # Unquoted, the substituted text is typed like any YAML scalar: the port is an integer.
    assert options == {"host": "ehr-7.test", "port": 7001}


def test_default_used_when_unset_or_empty(cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZZ_EHR_HOST", raising=False)
    monkeypatch.setenv("ZZ_EHR_PORT", "")
    cfg.channel("siu-to-clinic-ehr", """\
        description: sends to ${ZZ_EHR_HOST:-ehr.test}:${ZZ_EHR_PORT:-6661}
        destinations:
          clinic-ehr:
            mllp:
              host: "${ZZ_EHR_HOST:-ehr.test}"
              port: ${ZZ_EHR_PORT:-6661}
        """)
    channel = cfg.load().channels["siu-to-clinic-ehr"]
    assert channel.description == "sends to ehr.test:6661"
    assert channel.destinations[0].options == {"host": "ehr.test", "port": 6661}


def test_unset_without_default_is_a_problem_at_the_scalar(
    cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZZ_EHR_HOST", raising=False)
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: "${ZZ_EHR_HOST}", port: 6661}
        """)
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:3:18: environment variable ZZ_EHR_HOST is not set",
    ]


def test_quoted_reference_stays_text(cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZZ_EHR_PORT", "7001")
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr: {mllp: {host: ehr.test, port: "${ZZ_EHR_PORT}"}}
        """)
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:2:45: expected an integer, got '7001'",
    ]


def test_unquoted_reference_in_flow_mapping_gets_a_hint(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "destinations: {a: {mllp: {host: h, port: ${P}}}}\n")
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:1:43: invalid YAML: expected ',' or '}', but got '{' "
        "(while parsing a flow mapping); inside {...} or [...] write \"${NAME}\" in quotes",
    ]


def test_escaped_and_malformed_references() -> None:
    assert substitute("cost $${HOME}", {}).text == "cost ${HOME}"
    assert substitute("${1BAD}", {}).errors == (
        "expected ${NAME} or ${NAME:-default}, got '${1BAD}'",
    )
    assert substitute("${OPEN", {}).errors == (
        "expected ${NAME} or ${NAME:-default}, got '${OPEN'",
    )
    assert substitute("${A}-${B:-b}", {"A": "a"}).text == "a-b"
    assert substitute("plain", {}).changed is False


def test_literal_secret_is_a_problem_and_never_printed(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            file: {directory: out, client_secret: zz-literal-value-000000}
        """)
    problems = cfg.problems()
    assert problems == [
        "channels/siu-to-clinic-ehr.yaml:3:43: secrets must come from the environment: "
        "write ${NAME}",
    ]
    assert "zz-literal" not in "".join(problems)


@pytest.mark.parametrize(
    "key",
    ["password", "token", "api_key", "private_key", "db_password", "ehr_token", "Secret",
     "secret_next"],
)
def test_every_secret_key_shape_is_checked(tmp_path_factory: pytest.TempPathFactory,
                                           key: str) -> None:
    cfg = ConfigDir(tmp_path_factory.mktemp("cfg")).baseline()
    cfg.table("providers", f"DR_ZZTEST:\n  {key}: ${{ZZ_X:-zz-default}}\n")
    assert cfg.problems() == [
        "transforms/tables/providers.yaml:2:"
        f"{5 + len(key)}: secrets must come from the environment: write ${{NAME}}",
    ]


def test_secret_from_environment_is_resolved_and_not_echoed(
    cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZZ_FILE_SECRET", "zz-too-short")
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            file: {directory: out, client_secret: "${ZZ_FILE_SECRET}"}
        """)
    # The schema rejects the value (too short); the problem must not repeat it.
    problems = cfg.problems()
    assert problems == [
        "channels/siu-to-clinic-ehr.yaml:3:43: expected at least 20 characters",
    ]
    monkeypatch.setenv("ZZ_FILE_SECRET", "zz-long-enough-synthetic-secret")
    options = cfg.load().channels["siu-to-clinic-ehr"].destinations[0].options
    assert options["client_secret"] == "zz-long-enough-synthetic-secret"


def test_password_in_a_url_must_come_from_the_environment(
    cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = cfg.routes_file.read_text()
    cfg.routes(text.replace("sqlite:data/engine.db",
                            "postgresql://engine:zz-literal@db.test/engine"))
    problems = cfg.problems()
    assert problems == [
        "routes.yaml:1:8: secrets must come from the environment: write ${NAME}",
    ]
    assert "zz-literal" not in "".join(problems)
    monkeypatch.setenv("ZZ_PG_PASSWORD", "zz-pw")
    cfg.routes(text.replace("sqlite:data/engine.db",
                            "postgresql://engine:${ZZ_PG_PASSWORD}@db.test/engine"))
    assert cfg.load().store == "postgresql://engine:zz-pw@db.test/engine"
