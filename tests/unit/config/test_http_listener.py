"""HTTP listeners, the time zone and channel conflict policies in routes.yaml and channels."""

from __future__ import annotations

from tests.unit.config.support import ConfigDir


def test_an_http_listener_loads_with_its_defaults(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          api:
            http: {port: 8080}
          feed:
            mllp: {port: 2575}
        routes:
          api: [siu-to-clinic-ehr]
          feed: [siu-to-clinic-ehr]
        """)
    config = cfg.load()
    api = config.listeners["api"]
    assert api.mllp is None and api.http is not None
    assert (api.http.host, api.http.port, api.http.path) == ("127.0.0.1", 8080, "/fhir")
    assert api.http.max_body_bytes == 1024 * 1024
    assert api.address == ("127.0.0.1", 8080)
    assert config.listeners["feed"].http is None
    assert config.timezone == "UTC"


def test_a_listener_needs_exactly_one_kind(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          both:
            mllp: {port: 2575}
            http: {port: 8080}
          none:
            ack: commit
        routes:
          both: [siu-to-clinic-ehr]
          none: [siu-to-clinic-ehr]
        """)
    problems = cfg.problems()
    assert "routes.yaml:3:5: expected exactly one of mllp: or http:" in problems
    assert "routes.yaml:6:5: expected exactly one of mllp: or http:" in problems


def test_delivered_is_refused_on_http(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          api:
            http: {port: 8080}
            ack: delivered
        routes:
          api: [siu-to-clinic-ehr]
        """)
    (problem,) = cfg.problems()
    assert problem.startswith("routes.yaml:4:10: expected commit or processed")


def test_http_and_mllp_listeners_cannot_share_a_port(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          api:
            http: {port: 2575}
          feed:
            mllp: {port: 2575}
        routes:
          api: [siu-to-clinic-ehr]
          feed: [siu-to-clinic-ehr]
        """)
    (problem,) = cfg.problems()
    assert "port 2575 on 127.0.0.1 is already used by listener 'api'" in problem


def test_bad_http_options_name_their_place(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          api:
            http: {port: 8080, path: "no slash", max_body_bytes: 0}
        routes:
          api: [siu-to-clinic-ehr]
        """)
    problems = cfg.problems()
    assert any(p.startswith("routes.yaml:3:30: expected a URL path like /fhir") for p in problems)
    assert any(p.startswith("routes.yaml:3:58:") for p in problems)


def test_timezone_must_be_a_known_zone(cfg: ConfigDir) -> None:
    routes = (cfg.root / "routes.yaml").read_text()
    cfg.routes("timezone: Europe/Berlin\n" + routes)
    assert cfg.load().timezone == "Europe/Berlin"
    cfg.routes("timezone: Mars/Olympus\n" + routes)
    (problem,) = cfg.problems()
    assert problem.startswith("routes.yaml:1:11: unknown time zone 'Mars/Olympus'")


def test_conflicts_policy(cfg: ConfigDir) -> None:
    assert cfg.load().channels["siu-to-clinic-ehr"].conflicts == "flag"
    path = cfg.root / "channels" / "siu-to-clinic-ehr.yaml"
    text = path.read_text()
    path.write_text(text + "conflicts: reject\n")
    assert cfg.load().channels["siu-to-clinic-ehr"].conflicts == "reject"
    path.write_text(text + "conflicts: sometimes\n")
    (problem,) = cfg.problems()
    assert problem.endswith(".yaml:19:12: expected one of flag, reject, got 'sometimes'")
