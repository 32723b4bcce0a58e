"""Outbound authentication: OAuth 2.0 bearer tokens for destinations (client credentials with a
secret, or SMART Backend Services with a signed JWT assertion). Nothing here logs or repeats a
secret."""

from engine.auth.token_client import (
    ClientSecretAuth,
    SmartBackendAuth,
    TokenClient,
    TokenError,
)

__all__ = ["ClientSecretAuth", "SmartBackendAuth", "TokenClient", "TokenError"]
