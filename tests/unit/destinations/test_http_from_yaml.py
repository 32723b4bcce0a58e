"""The FHIR and webhook destinations as an analyst writes them: loaded from YAML through the
configuration checker (units converted, secrets only from ${ENV}) and built."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, load
from engine.destinations import build
from engine.webhooks import WebhookSecret
from tests.unit.pipeline.support import ConfigRoot

CHANNEL = """\
    destinations:
      fhir-server:
        fhir:
          base_url: https://fhir.example/r4
          timeout: 5s
          auth: {type: client_credentials, token_url: https://auth.example/token,
                 client_id: engine, client_secret: "${FHIR_SECRET}"}
      events:
        webhook: {url: https://hooks.example/in, secret: "${HOOK_SECRET}",
                  secret_next: "${HOOK_SECRET_NEXT}"}
    """


def test_fhir_and_webhook_destinations_load_and_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIR_SECRET", "s3cr3t-value")
    monkeypatch.setenv("HOOK_SECRET", str(WebhookSecret.generate()))
    monkeypatch.setenv("HOOK_SECRET_NEXT", str(WebhookSecret.generate()))
    config = ConfigRoot(tmp_path).with_channel(CHANNEL).load()
    fhir, webhook = config.channels["feed"].destinations
    assert fhir.options["timeout"] == 5.0
    assert build(fhir).name == "fhir-server"
    assert build(webhook).name == "events"


def test_a_literal_webhook_secret_is_refused(tmp_path: Path) -> None:
    text = CHANNEL.replace('"${HOOK_SECRET_NEXT}"', "whsec_literal")
    root = ConfigRoot(tmp_path).with_channel(text)
    with pytest.raises(ConfigError) as caught:
        load(root.root / "routes.yaml")
    messages = [p.message for p in caught.value.problems]
    assert any("secrets must come from the environment" in m for m in messages)
    assert not any("whsec_literal" in m for m in messages)
