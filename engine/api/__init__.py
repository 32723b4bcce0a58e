"""The admin surface of a running engine: the REST API under /api (engine.api.admin), its
OpenAPI document (engine.api.openapi). Served by HTTP listeners whose `serve:` names
`admin`, behind the same door, TLS, rate limits, credentials and permission table as the
FHIR API (engine.listeners.http)."""
