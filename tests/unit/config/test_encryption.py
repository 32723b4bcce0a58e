"""`security: encryption:` of routes.yaml: keys from a key file and `${ENV}`, `current`, and the
problems (file:line:column, never a key's value)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine.config import ConfigError
from engine.config.security import routes_security as security_of

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(range(1, 33))).decode()


def routes(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text("store: sqlite:data/engine.db\nsecurity:\n  encryption:\n" + block)
    return path


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "atrest.keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(path: Path, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        security_of(path, environ)
    text = str(err.value)
    for secret in (KEY, OTHER, "bm90IGEga2V5"):
        assert secret not in text
    return [str(p) for p in err.value.problems]


def test_keys_from_a_file_and_the_environment_make_one_ring(tmp_path: Path) -> None:
    key_file(tmp_path, f"# old\nk2025 {KEY}\n")
    path = routes(tmp_path, "    key_file: atrest.keys\n    keys: {k2026: \"${K2026}\"}\n"
                            "    current: k2026\n")
    ring = security_of(path, {"K2026": OTHER}).encryption
    assert ring is not None and ring.ids == ("k2025", "k2026") and ring.current == "k2026"
    assert KEY not in repr(ring)
    assert security_of(routes(tmp_path, "    keys: {a: \"${A}\"}\n    current: a\n"),
                       {"A": KEY}).encryption is not None


def test_no_encryption_block_means_no_ring_and_the_production_profile(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("store: sqlite:data/engine.db\n")
    security = security_of(path, {})
    assert security.encryption is None and security.production


@pytest.mark.parametrize(
    ("block", "environ", "expected"),
    [
        ("    keys: {k1: \"${K1}\"}\n    current: k1\n", {"K1": "bm90IGEga2V5"},
         "routes.yaml:4:16: key k1: expected the base64 of a 32-byte key, got 9 bytes"),
        ("    keys: {k1: \"${K1}\"}\n    current: k1\n", {"K1": "***"},
         "routes.yaml:4:16: key k1: expected the base64 of a 32-byte key (not valid base64)"),
        ("    keys: {k1: \"${K1}\"}\n    current: k2\n", {"K1": KEY},
         "routes.yaml:5:14: current key k2 is not configured (keys: k1)"),
        ("    keys: {k1: \"${K1}\"}\n    current: k1\n", {},
         "routes.yaml:4:16: environment variable K1 is not set"),
        (f"    keys: {{k1: {KEY}}}\n    current: k1\n", {},
         "routes.yaml:4:16: secrets must come from the environment: write ${NAME}"),
        ("    current: k1\n", {},
         "routes.yaml:4:5: expected key_file: and/or keys:, and current:"),
        ("    keys: {k1: \"${K1}\"}\n", {"K1": KEY},
         "routes.yaml:4:5: missing required key 'current'"),
        ("    keys: {'bad id': \"${K1}\"}\n    current: k1\n", {"K1": KEY},
         "routes.yaml:4:12: expected a key id of 1-32"),
    ],
)
def test_encryption_problems_name_the_place(
    tmp_path: Path, block: str, environ: dict[str, str], expected: str
) -> None:
    found = problems(routes(tmp_path, block), environ)
    assert any(p.endswith(expected) or expected in p for p in found), found


def test_key_file_problems_name_the_key_file_line(tmp_path: Path) -> None:
    keys = key_file(tmp_path, f"k1 {KEY}\nk2 {KEY[:-4]}\n")
    path = routes(tmp_path, "    key_file: atrest.keys\n    current: k1\n")
    (found,) = problems(path, {})
    assert found.startswith(f"{path}:4:15: {keys}:2:4: key k2: expected the base64")
    keys.chmod(0o640)
    (found,) = problems(path, {})
    assert f"{keys}:1:1: the key file is open to group or others (mode 640)" in found


def test_an_id_in_the_file_and_the_environment_is_refused(tmp_path: Path) -> None:
    key_file(tmp_path, f"k1 {KEY}\n")
    path = routes(tmp_path, "    key_file: atrest.keys\n    keys: {k1: \"${K1}\"}\n"
                            "    current: k1\n")
    (found,) = problems(path, {"K1": OTHER})
    assert found.endswith("key k1 is also in the key file: give each id once")
