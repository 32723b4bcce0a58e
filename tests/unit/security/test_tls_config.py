"""The TLS parts of the configuration: a plain listener on a non-loopback host is refused by
`load` and `engine check` unless it says `plain: allow`; listener and destination `tls:`
files that are missing or unusable are problems at their option, never quoting a file."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from engine.config import ConfigError, load, run_check
from engine.security.devcerts import DevCerts, make_dev_certs

CHANNEL = """\
accept: {type: [SIU^S12]}
destinations:
  out:
    %s
"""


@pytest.fixture
def certs(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "certs")


def write(root: Path, listener: str, destination: str = "file: {directory: out}") -> Path:
    (root / "channels").mkdir(parents=True, exist_ok=True)
    (root / "channels" / "feed.yaml").write_text(CHANNEL % destination)
    routes = root / "routes.yaml"
    routes.write_text(textwrap.dedent(f"""\
        store: sqlite:data/engine.db
        listeners:
          feed:
            {listener}
        routes:
          feed: [feed]
        """))
    return routes


def problems(routes: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(routes)
    return [f"{p.pos.line}:{p.pos.column}: {p.message}" for p in caught.value.problems]


def check_output(routes: Path) -> tuple[int, str]:
    out = io.StringIO()
    return run_check(routes, out), out.getvalue()


@pytest.mark.parametrize("kind", ["mllp", "http"])
def test_plain_listener_on_all_interfaces_is_refused(tmp_path: Path, kind: str) -> None:
    routes = write(tmp_path, f"{kind}: {{port: 2575, host: 0.0.0.0}}")
    [problem] = problems(routes)
    assert problem.startswith("4:5: a listener on 0.0.0.0 (not loopback) needs tls")
    assert "plain: allow" in problem
    code, text = check_output(routes)
    assert code == 1 and f"{routes}:4:5: a listener on 0.0.0.0" in text


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "::", "ehr-gateway.test"])
def test_plain_allow_says_it_explicitly(tmp_path: Path, host: str) -> None:
    refused = write(tmp_path / "a", f"mllp: {{port: 2575, host: '{host}'}}")
    assert len(problems(refused)) == 1
    allowed = write(tmp_path / "b", f"mllp: {{port: 2575, host: '{host}', plain: allow}}")
    assert load(allowed).listeners["feed"].mllp.plain == "allow"  # type: ignore[union-attr]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_plain_listener_on_loopback_needs_nothing(tmp_path: Path, host: str) -> None:
    load(write(tmp_path, f"http: {{port: 8080, host: '{host}'}}"))


def test_plain_value_other_than_allow_is_an_error(tmp_path: Path) -> None:
    routes = write(tmp_path, "mllp: {port: 2575, host: 0.0.0.0, plain: yes}")
    assert any("expected allow" in p for p in problems(routes))


def test_tls_listener_on_all_interfaces_loads(tmp_path: Path, certs: DevCerts) -> None:
    routes = write(tmp_path, f"mllp: {{port: 2575, host: 0.0.0.0, tls: {{cert: {certs.server}, "
                             f"key: {certs.server_key}, client_ca: {certs.ca}, "
                             f"allow: ['{certs.client_fingerprint}', CN=lab-feed]}}}}")
    tls = load(routes).listeners["feed"].mllp.tls  # type: ignore[union-attr]
    assert tls is not None and tls.client_ca == str(certs.ca)
    assert tls.allow == (certs.client_fingerprint, "CN=lab-feed")


def test_tls_paths_resolve_against_the_config_root(tmp_path: Path, certs: DevCerts) -> None:
    routes = write(tmp_path, "http: {port: 8443, tls: {cert: certs/server.pem, "
                             "key: certs/server-key.pem}}")
    tls = load(routes).listeners["feed"].http.tls  # type: ignore[union-attr]
    assert tls is not None and tls.cert == str(tmp_path / "certs" / "server.pem")


def test_plain_beside_tls_contradicts(tmp_path: Path, certs: DevCerts) -> None:
    routes = write(tmp_path, f"mllp: {{port: 1, plain: allow, tls: {{cert: {certs.server}, "
                             f"key: {certs.server_key}}}}}")
    assert any("plain: allow contradicts tls" in p for p in problems(routes))


def test_missing_and_unusable_files_name_the_option(tmp_path: Path, certs: DevCerts) -> None:
    secret = tmp_path / "not-a-cert.pem"
    secret.write_text("PATIENT Jane Doe 1970-01-01\n")
    routes = write(tmp_path, f"mllp: {{port: 1, tls: {{cert: {secret}, key: {certs.server_key}}}}}")
    [problem] = problems(routes)
    assert problem.startswith("4:33: not a PEM certificate")
    assert "Jane" not in problem

    routes = write(tmp_path, "mllp: {port: 1, tls: {cert: nowhere.pem, key: nokey.pem}}")
    [problem] = problems(routes)
    assert "cannot read" in problem and "No such file" in problem

    # A key that is not the certificate's.
    routes = write(tmp_path, f"mllp: {{port: 1, tls: {{cert: {certs.server}, "
                             f"key: {certs.client_key}}}}}")
    [problem] = problems(routes)
    assert "does not belong to the certificate" in problem

    routes = write(tmp_path, f"http: {{port: 1, tls: {{cert: {certs.server}, "
                             f"key: {certs.server_key}, client_ca: {secret}}}}}")
    [problem] = problems(routes)
    assert "not a PEM file of CA certificates" in problem and "Jane" not in problem


def test_bad_allow_entries_are_named_by_position(tmp_path: Path, certs: DevCerts) -> None:
    routes = write(tmp_path, f"mllp: {{port: 1, tls: {{cert: {certs.server}, key: "
                             f"{certs.server_key}, client_ca: {certs.ca}, "
                             "allow: ['AB:CD', 'not a subject']}}")
    [problem] = problems(routes)
    assert "SHA-256 fingerprint of 64 hex digits" in problem
    routes = write(tmp_path, f"mllp: {{port: 1, tls: {{cert: {certs.server}, key: "
                             f"{certs.server_key}, allow: ['CN=x']}}}}")
    assert any("needs client_ca" in p for p in problems(routes))


def test_unknown_tls_keys_are_errors(tmp_path: Path, certs: DevCerts) -> None:
    routes = write(tmp_path, f"mllp: {{port: 1, tls: {{cert: {certs.server}, "
                             f"key: {certs.server_key}, ciphers: ALL}}}}")
    assert any("ciphers" in p for p in problems(routes))


def test_destination_tls_is_checked(tmp_path: Path, certs: DevCerts) -> None:
    good = write(tmp_path / "a", "mllp: {port: 1}",
                 f"mllp: {{host: ehr.test, port: 6661, tls: {{ca: {certs.ca}, "
                 f"cert: {certs.client}, key: {certs.client_key}}}}}")
    dest = load(good).channels["feed"].destinations[0]
    assert dest.options["tls"]["ca"] == str(certs.ca)

    missing = write(tmp_path / "b", "mllp: {port: 1}",
                    "fhir: {base_url: 'https://fhir.test/r4', tls: {ca: missing-ca.pem}}")
    code, text = check_output(missing)
    assert code == 1 and "channels/feed.yaml" in text and "cannot read" in text

    half = write(tmp_path / "c", "mllp: {port: 1}",
                 f"mllp: {{host: ehr.test, port: 6661, tls: {{cert: {certs.client}}}}}")
    assert any("cert and key go together" in p for p in _channel_problems(half))

    plain_url = write(tmp_path / "d", "mllp: {port: 1}",
                      "webhook: {url: 'http://hooks.test/x', secret: whsec_"
                      "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0, tls: {verify: false}}")
    assert any("tls applies to https:// URLs" in p for p in _channel_problems(plain_url))


def _channel_problems(routes: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(routes)
    return [p.message for p in caught.value.problems]
