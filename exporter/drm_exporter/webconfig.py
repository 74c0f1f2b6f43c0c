"""The web config file: TLS and basic auth for every endpoint, in the format of the Prometheus
exporter-toolkit (`--web.config.file`), so one file serves this exporter and node_exporter alike:

    tls_server_config:
      cert_file: server.crt            # relative paths: from this file's folder
      key_file: server.key
      client_auth_type: NoClientCert   # or VerifyClientCertIfGiven, RequireAndVerifyClientCert
      client_ca_file: ca.crt           # needed when client certificates are verified
      min_version: TLS12               # or TLS13
    basic_auth_users:
      prometheus: $2b$12$...           # bcrypt hash of the password

Parsed like config.py (unknown key or bad value: an error naming the key and line, exit 2), and
the certificate is loaded at start, so a bad one is a config error rather than a failing
handshake later. `BasicAuth` checks the credentials of each request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt

from .config import ConfigError, FieldError, line_of, parse_yaml, read_text

REALM = "drm-exporter"

ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TlsVersion = Literal["TLS12", "TLS13"]

_VERIFY_MODE = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_TLS_VERSION = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# $2a$/$2b$/$2y$, a two-digit cost, 22 characters of salt and 31 of hash
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str = ""
    min_version: TlsVersion = "TLS12"

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file"):
            if not getattr(self, name):
                raise FieldError((name,), "required when tls_server_config is given")
        if self.client_auth_type != "NoClientCert" and not self.client_ca_file:
            raise FieldError(("client_ca_file",),
                             f"required with client_auth_type {self.client_auth_type}")


@dataclass(frozen=True)
class WebConfig:
    tls_server_config: TlsServerConfig | None = None  # absent: plain HTTP
    basic_auth_users: dict[str, str] = field(default_factory=dict)  # user → bcrypt hash

    def __post_init__(self) -> None:
        for user, hashed in self.basic_auth_users.items():
            where = ("basic_auth_users", user)
            if not user or ":" in user:
                raise FieldError(where, "a user name must be non-empty and without ':' (basic "
                                 "auth could not carry it)")
            if not _BCRYPT_RE.match(hashed):
                # never echo the value: a plain password pasted here must not reach the log
                raise FieldError(where, "not a bcrypt hash ($2b$<cost>$<53 characters>); make "
                                 "one with python -c \"import bcrypt; print(bcrypt.hashpw(b'pw', "
                                 "bcrypt.gensalt()).decode())\"")


def _resolve(base: Path, name: str) -> str:
    return name if not name or Path(name).is_absolute() else str(base / name)


def server_ssl_context(tls: TlsServerConfig, source: str = "<web config>",
                       where: Callable[[tuple[str, ...]], str] | None = None) -> ssl.SSLContext:
    """The server side of TLS; an unreadable or mismatched certificate is a ConfigError."""
    at = where or (lambda _path: source)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSION[tls.min_version]
    for name in ("cert_file", "key_file"):
        path = getattr(tls, name)
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{at(('tls_server_config', name))}: tls_server_config.{name}: "
                              f"cannot read {path}: {e.strerror or e}") from None
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"{at(('tls_server_config', 'cert_file'))}: "
                          f"tls_server_config.cert_file: {tls.cert_file} and {tls.key_file} are "
                          f"not a PEM certificate and its key ({reason})") from None
    if tls.client_auth_type != "NoClientCert":
        ctx.verify_mode = _VERIFY_MODE[tls.client_auth_type]
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{at(('tls_server_config', 'client_ca_file'))}: "
                              f"tls_server_config.client_ca_file: cannot load "
                              f"{tls.client_ca_file}: {getattr(e, 'strerror', None) or e}"
                              ) from None
    return ctx


@dataclass(frozen=True)
class WebSecurity:
    """What the server needs from a web config: a TLS context and a credential check."""

    ssl_context: ssl.SSLContext | None
    basic_auth: BasicAuth | None


def load_web_config(text: str, source: str = "<web config>",
                    base_dir: Path | None = None) -> WebSecurity:
    cfg, root = parse_yaml(WebConfig, text, source)
    assert isinstance(cfg, WebConfig)
    ctx = None
    if cfg.tls_server_config is not None:
        tls = cfg.tls_server_config
        if base_dir is not None:
            tls = dataclasses.replace(
                tls, cert_file=_resolve(base_dir, tls.cert_file),
                key_file=_resolve(base_dir, tls.key_file),
                client_ca_file=_resolve(base_dir, tls.client_ca_file))
        ctx = server_ssl_context(tls, source, lambda path: line_of(source, root, path))
    auth = BasicAuth(cfg.basic_auth_users) if cfg.basic_auth_users else None
    return WebSecurity(ctx, auth)


def load_web_config_file(path: Path) -> WebSecurity:
    return load_web_config(read_text(path), str(path), path.parent)


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """`Authorization: Basic base64(user:password)` → (user, password); None when absent or
    malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


def _digest(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


class BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes.

    A bcrypt check costs tens of milliseconds by design, too much for a Prometheus scraping
    every few seconds, so a success is remembered for `ttl_s` (exporter-toolkit does the same).
    Only successes are remembered: every failure costs a full bcrypt, an unknown user included
    (checked against a real hash), so the time taken tells an attacker nothing about which part
    was wrong. The cache holds keyed digests, never a password."""

    def __init__(self, users: Mapping[str, str], ttl_s: float = 60.0, max_entries: int = 256,
                 now: Callable[[], float] = time.monotonic) -> None:
        if not users:
            raise ValueError("basic auth needs at least one user")
        self._users = [(_digest(u.encode()), h.encode()) for u, h in users.items()]
        # An unknown user is checked against the costliest real hash, so it takes as long.
        self._decoy = max((h for _, h in self._users), key=lambda h: int(h[4:6]))
        self._key = secrets.token_bytes(32)  # cache keys cannot be precomputed from outside
        self._ttl_s, self._max_entries, self._now = ttl_s, max_entries, now
        self._cache: dict[bytes, float] = {}  # keyed digest of (user, hash, password) → expiry
        self._cache_lock = threading.Lock()
        # One bcrypt at a time: a flood of wrong passwords costs one core, not all of them.
        self._bcrypt_lock = threading.Lock()

    def check(self, authorization: str | None) -> bool:
        creds = parse_basic(authorization)
        if creds is None:
            return False
        user, password = creds
        wanted = _digest(user)
        stored = None
        for digest, hashed in self._users:  # no early exit, constant-time compare
            if hmac.compare_digest(digest, wanted):
                stored = hashed
        hashed = stored if stored is not None else self._decoy
        key = hmac.new(self._key, b"\0".join((user, hashed, password)), hashlib.sha256).digest()
        now = self._now()
        with self._cache_lock:
            expiry = self._cache.get(key)
        if expiry is not None and expiry > now:
            return True
        with self._bcrypt_lock:
            try:
                ok = bcrypt.checkpw(password, hashed)
            except ValueError:  # bcrypt 5 refuses passwords over 72 bytes
                ok = False
        if not ok or stored is None:
            return False
        with self._cache_lock:
            if len(self._cache) >= self._max_entries:
                for k in [k for k, exp in self._cache.items() if exp <= now]:
                    del self._cache[k]
                while len(self._cache) >= self._max_entries:
                    del self._cache[next(iter(self._cache))]  # the oldest
            self._cache[key] = now + self._ttl_s
        return True
