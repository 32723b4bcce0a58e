"""`rate_limit:` of an HTTP listener in routes.yaml: off by default, read into `RateLimit`,
every mistake a problem at its file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.model import Rate, RateLimit
from engine.security.devcerts import make_dev_certs
from tests.unit.config.support import ConfigDir


@pytest.fixture
def cfg(tmp_path: Path) -> ConfigDir:
    return ConfigDir(tmp_path).baseline()


def api(cfg: ConfigDir, http: str) -> None:
    cfg.routes(f"""\
        listeners:
          api:
            http: {http}
        routes:
          api: [siu-to-clinic-ehr]
        """)


def test_no_rate_limit_by_default(cfg: ConfigDir) -> None:
    api(cfg, "{port: 8080}")
    http = cfg.load().listeners["api"].http
    assert http is not None and http.rate_limit is None


def test_a_per_ip_limit_loads(cfg: ConfigDir) -> None:
    api(cfg, "{port: 8080, rate_limit: {per_ip: 100/hour}}")
    http = cfg.load().listeners["api"].http
    assert http is not None
    assert http.rate_limit == RateLimit(per_ip=Rate(100, 3600.0, "100/hour"))


def test_a_per_client_limit_loads_beside_client_certificates(cfg: ConfigDir) -> None:
    certs = make_dev_certs(cfg.root / "certs")
    api(cfg, f"""
              port: 8443
              tls: {{cert: {certs.server}, key: {certs.server_key}, client_ca: {certs.ca}}}
              rate_limit: {{per_ip: 100/hour, per_client: 1000/minute}}""")
    http = cfg.load().listeners["api"].http
    assert http is not None and http.rate_limit is not None
    assert http.rate_limit.per_client == Rate(1000, 60.0, "1000/minute")


def test_per_client_without_client_certificates_is_a_problem(cfg: ConfigDir) -> None:
    api(cfg, """
              port: 8080
              rate_limit:
                per_client: 1000/minute""")
    (problem,) = cfg.problems()
    assert problem.startswith("routes.yaml:6:9: per_client counts requests by client identity")


@pytest.mark.parametrize("written", ["100/day", "'0/hour'", "100 per hour", "100"])
def test_a_bad_rate_is_a_problem_at_its_value(cfg: ConfigDir, written: str) -> None:
    api(cfg, f"{{port: 8080, rate_limit: {{per_ip: {written}}}}}")
    (problem,) = cfg.problems()
    #     http: {port: 8080, rate_limit: {per_ip: <value at column 45>
    assert problem.startswith("routes.yaml:3:45: expected a rate like 100/hour: a whole "
                              "number of requests per second, minute or hour, got "), problem


def test_an_unknown_or_empty_rate_limit_is_a_problem(cfg: ConfigDir) -> None:
    api(cfg, "{port: 8080, rate_limit: {per_host: 1/second}}")
    (problem,) = cfg.problems()
    assert problem == ("routes.yaml:3:37: unknown key 'per_host' (expected one of: per_ip, "
                       "per_client)")
    api(cfg, "{port: 8080, rate_limit: {}}")
    (problem,) = cfg.problems()
    assert problem.startswith("routes.yaml:3:36: expected per_ip and/or per_client"), problem


def test_rate_limit_is_not_an_mllp_option(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          feed:
            mllp: {port: 2575, rate_limit: {per_ip: 1/second}}
        routes:
          feed: [siu-to-clinic-ehr]
        """)
    (problem,) = cfg.problems()
    assert problem.startswith("routes.yaml:3:24: unknown key 'rate_limit'"), problem
