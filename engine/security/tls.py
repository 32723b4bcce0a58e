"""TLS for every listener and client: the SSL contexts, the per-listener allow-list of client
certificates, and the words used when a peer's certificate is refused.

Rules it keeps:
- TLS 1.2 is the floor everywhere; TLS 1.2 offers only ECDHE key exchange with AES-GCM or
  ChaCha20-Poly1305 (forward secrecy, AEAD), TLS 1.3 keeps OpenSSL's default suites (all AEAD).
  Compression and renegotiation stay off.
- A client verifies the server's certificate and host name unless `verify: false` says
  otherwise, and that choice is logged as a warning when the context is made (at start-up).
- A listener with `client_ca` requires a client certificate signed by it; with `allow` the
  certificate must also be on the list (SHA-256 fingerprint, `CN=...` or a full RFC 4514
  subject).
- Errors name the option (`cert`, `key`, `client_ca`, `ca`, `allow[2]`) and why, never a
  file's content. Reasons and log lines name a peer by scheme, host and port only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from engine.config.model import ClientTls, ListenerTls

log = logging.getLogger("engine.security")

# TLS 1.2 suites: ECDHE only (forward secrecy) with an AEAD cipher. TLS 1.3 suites are not
# set by this string; OpenSSL's defaults there are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

_HEX = re.compile(r"^(?:sha256:)?[0-9A-Fa-f:]+$", re.IGNORECASE)


class TlsConfigError(ValueError):
    """A TLS setting that cannot be used: `option` names it (`cert`, `allow[1]`, ...)."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"tls {option}: {message}")


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def server_context(tls: ListenerTls) -> ssl.SSLContext:
    """The context of a TLS listener; raises TlsConfigError naming the option at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, tls.cert, tls.key)
    if tls.client_ca is not None:
        _load_ca(context, "client_ca", tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.allow:
        raise TlsConfigError("allow", "an allow-list needs client_ca (the CA that signs the "
                                      "client certificates)")
    AllowList(tls.allow)  # each entry readable, or a TlsConfigError at it
    return context


def client_context(tls: ClientTls | None, who: str = "") -> ssl.SSLContext:
    """The context of a TLS client: system CAs, or only `ca` when given; client certificate
    for mutual TLS when `cert` and `key` are given. `who` names the client in the warning
    logged when verification is off."""
    tls = tls or ClientTls()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    _harden(context)
    if tls.ca is not None:
        _load_ca(context, "ca", tls.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        raise TlsConfigError(missing, "cert and key go together (a client certificate and "
                                      "its private key)")
    if tls.cert is not None and tls.key is not None:
        _load_chain(context, tls.cert, tls.key)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning("%s: TLS certificate verification is off (verify: false): the peer is "
                    "not authenticated", who or "client")
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    # Each file is checked on its own first, so the error names the option at fault.
    # Read outside the `try`s: TlsConfigError is a ValueError too.
    cert_pem, key_pem = _read("cert", cert), _read("key", key)
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsConfigError("cert", "not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsConfigError("key", "not an unencrypted PEM private key") from None
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError:
        raise TlsConfigError("key", "does not belong to the certificate in cert") from None


def _load_ca(context: ssl.SSLContext, option: str, path: str) -> None:
    data = _read(option, path)
    try:
        x509.load_pem_x509_certificates(data)
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (ValueError, ssl.SSLError):
        raise TlsConfigError(option, "not a PEM file of CA certificates") from None


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(option, f"cannot read {path}: {exc.strerror or 'error'}") from None


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as `AB:CD:...`, the form `engine certs dev` prints."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class _Subject:
    name: x509.Name
    cn: str | None  # set for a `CN=x` entry: it matches any subject whose common name is x


class AllowList:
    """Client certificates a listener accepts. Empty means every certificate its `client_ca`
    signed."""

    def __init__(self, entries: tuple[str, ...] | list[str]) -> None:
        self.fingerprints: set[str] = set()
        self.subjects: list[_Subject] = []
        for i, entry in enumerate(entries):
            self._add(f"allow[{i}]", entry)

    def __bool__(self) -> bool:
        return bool(self.fingerprints or self.subjects)

    def _add(self, option: str, entry: str) -> None:
        text = entry.strip()
        if _HEX.match(text):
            digits = text.lower().removeprefix("sha256:").replace(":", "")
            if len(digits) != 64:
                raise TlsConfigError(option, "expected a SHA-256 fingerprint of 64 hex digits "
                                             f"(colons optional), got {len(digits)} digits")
            self.fingerprints.add(digits)
            return
        try:
            name = x509.Name.from_rfc4514_string(text)
        except ValueError:
            name = None
        if name is None or not list(name):
            raise TlsConfigError(option, "expected a SHA-256 fingerprint, CN=<name> or an RFC "
                                         "4514 subject like CN=lab,O=Clinic")
        attributes = list(name)
        cn_only = len(attributes) == 1 and attributes[0].oid == NameOID.COMMON_NAME
        self.subjects.append(_Subject(name, str(attributes[0].value) if cn_only else None))

    def permits(self, der: bytes | None) -> bool:
        if not self:
            return True
        if der is None:
            return False
        if hashlib.sha256(der).hexdigest() in self.fingerprints:
            return True
        try:
            subject = x509.load_der_x509_certificate(der).subject
        except ValueError:
            return False
        names = {str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        for wanted in self.subjects:
            if wanted.cn is not None:
                if wanted.cn in names:
                    return True
            elif wanted.name == subject:
                return True
        return False


def peer_refusal(allow: AllowList, ssl_object: object) -> str | None:
    """None when the connection's client certificate is allowed; otherwise what to log: the
    certificate's fingerprint (an identifier of a machine, not of a patient)."""
    if not allow:
        return None
    der = ssl_object.getpeercert(binary_form=True) if isinstance(
        ssl_object, ssl.SSLObject | ssl.SSLSocket) else None
    if allow.permits(der):
        return None
    if der is None:
        return "no client certificate"
    return f"client certificate SHA-256 {fingerprint(der)} is not on the allow-list"


def is_loopback(host: str) -> bool:
    """Whether a listener bound to `host` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refused(peer: str) -> str:
    """The reason of a delivery whose server certificate failed verification."""
    return f"TLS certificate of {peer} refused"


def handshake_failed(peer: str) -> str:
    """The reason of a delivery whose TLS handshake failed for another cause (no common
    protocol or cipher, our client certificate refused)."""
    return f"TLS handshake with {peer} failed"
