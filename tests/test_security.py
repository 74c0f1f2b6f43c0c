"""TLS, basic auth and the API token over real sockets on 127.0.0.1, with a throwaway CA made
here; web config errors naming key and line; secrets kept out of the logs."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drm_exporter import webconfig
from drm_exporter.api import ApiError
from drm_exporter.client import HttpClient, spec_body
from drm_exporter.config import (
    API_TOKEN_ENV,
    ApiConfig,
    CollectorConfig,
    CollectorsConfig,
    Config,
    ConfigError,
    HostWorkerConfig,
    api_token,
    load_config_file,
)
from drm_exporter.exposition import SnapshotStore
from drm_exporter.fleet import WorkerSpec
from drm_exporter.service import Service
from drm_exporter.web import ExporterHTTPServer
from drm_exporter.webconfig import BasicAuth, load_web_config, load_web_config_file

USER = "prometheus"
PASSWORD = "correct horse battery staple"
CONFIG_TOKEN = "config-token-5f1e2d"
ENV_TOKEN = "env-token-9a8b7c"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()  # cost 4: fast tests


# --- a throwaway CA, a server and a client certificate --------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(folder: Path, stem: str, cn: str, ca_key: Any, ca_cert: x509.Certificate | None,
           *, server: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(ca_cert.subject if ca_cert else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    if ca_cert is None:  # the CA itself
        b = (b.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), True))
        ca_key = key
    else:
        b = (b.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_cert.public_key()), False)  # type: ignore[arg-type]
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                 False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                False)
    cert = b.sign(ca_key, hashes.SHA256())
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, folder / f"{stem}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _issue(d, "ca", "drm test CA", None, None, server=False)
    ca_cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    _issue(d, "server", "localhost", ca_key, ca_cert, server=True)
    _issue(d, "client", "scraper", ca_key, ca_cert, server=False)
    return d


def client_ctx(pki: Path, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    return ctx


WEB_YML = f"""tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  {USER}: {HASH}
"""


# --- requests -------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(port: int, method: str, path: str, *, ctx: ssl.SSLContext | None,
         headers: dict[str, str] | None = None, body: Any = None) -> Reply:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5) if ctx \
        else http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def worker_body(worker: str) -> dict[str, Any]:
    return spec_body(WorkerSpec(worker, "cpu", "aws", "us-east-1", "m5.2xlarge",
                                f"{worker}.test", 8, 32 * 1024**3, 0))


def quiet_config(**kw: Any) -> Config:
    """No simulator, no host worker: only what the test puts in."""
    return Config(listen_address="127.0.0.1:0", tick_interval_s=0.2,
                  host_worker=HostWorkerConfig(enabled=False),
                  collectors=CollectorsConfig(CollectorConfig(enabled=False),
                                              CollectorConfig(enabled=False)), **kw)


@pytest.fixture(scope="module")
def secure(pki: Path) -> Iterator[Service]:
    """TLS + basic auth from a web config file, and the API token from the config."""
    web = pki / "web.yml"
    web.write_text(WEB_YML)
    svc = Service(quiet_config(web_config_file=str(web), api=ApiConfig(token=CONFIG_TOKEN)),
                  environ={})
    svc.start()
    yield svc
    svc.stop()


def port(svc: Service) -> int:
    assert svc.http is not None
    return svc.http.port


AUTH = {"Authorization": basic(USER, PASSWORD)}


# --- basic auth and TLS on every endpoint ---------------------------------------------------------
def test_right_credentials_pass_on_every_endpoint(secure: Service, pki: Path) -> None:
    ctx = client_ctx(pki)
    r = call(port(secure), "GET", "/metrics", ctx=ctx, headers=AUTH)
    assert r.status == 200 and b"# TYPE drm_exporter_build_info gauge" in r.body
    r = call(port(secure), "GET", "/healthz", ctx=ctx, headers=AUTH)
    assert (r.status, r.body) == (200, b"ok\n")
    r = call(port(secure), "GET", "/api/v1/workers", ctx=ctx, headers=AUTH)
    assert r.status == 200 and "workers" in r.json()
    assert secure.http is not None and secure.http.scheme == "https"


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/api/v1/workers", "/"])
@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": basic(USER, "wrong")},
    {"Authorization": basic("mallory", PASSWORD)},  # right password, unknown user
    {"Authorization": basic(USER, PASSWORD + "x")},
    {"Authorization": "Basic not-base64!"},
    {"Authorization": f"Bearer {CONFIG_TOKEN}"},  # the API token is not a login
], ids=["missing", "wrong-password", "unknown-user", "longer-password", "malformed", "bearer"])
def test_wrong_or_missing_credentials_get_401(secure: Service, pki: Path, path: str,
                                              headers: dict[str, str]) -> None:
    r = call(port(secure), "GET", path, ctx=client_ctx(pki), headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="drm-exporter"'
    if path.startswith("/api/"):
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"]["status"] == 401
    else:
        assert r.headers["Content-Type"].startswith("text/plain")
        assert b"drm_" not in r.body and b"ok" not in r.body


def test_401_on_a_write_closes_without_reading_the_body(secure: Service, pki: Path) -> None:
    # The unread body must not be taken for the next request on a kept-alive connection.
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (f"PUT /api/v1/workers/w-unauth HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(smuggled)}\r\n\r\n").encode()
    raw = socket.create_connection(("127.0.0.1", port(secure)), timeout=5)
    with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(head + smuggled)
        got = b""
        while chunk := s.recv(65536):  # until the server closes
            got += chunk
    assert got.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in got
    assert got.count(b"HTTP/1.1 ") == 1, got
    assert "w-unauth" not in secure.engine.workers()


def test_plain_http_to_the_tls_port_fails_and_the_server_carries_on(secure: Service,
                                                                     pki: Path) -> None:
    with pytest.raises((http.client.HTTPException, OSError)):
        call(port(secure), "GET", "/healthz", ctx=None, headers=AUTH)
    r = call(port(secure), "GET", "/healthz", ctx=client_ctx(pki), headers=AUTH)
    assert (r.status, r.body) == (200, b"ok\n")


def test_a_silent_client_is_dropped_and_blocks_no_one(pki: Path) -> None:
    sec = load_web_config(WEB_YML, "web.yml", pki)
    srv = ExporterHTTPServer("127.0.0.1", 0, SnapshotStore(), ssl_context=sec.ssl_context,
                             basic_auth=sec.basic_auth, handshake_timeout_s=0.5)
    srv.start_background()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as silent:
            # served while the silent client holds its connection: the handshake is not in the
            # accept loop
            r = call(srv.port, "GET", "/healthz", ctx=client_ctx(pki), headers=AUTH)
            assert r.status == 200
            t0 = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - t0 < 4
        r = call(srv.port, "GET", "/healthz", ctx=client_ctx(pki), headers=AUTH)
        assert r.status == 200
    finally:
        srv.shutdown()
        srv.server_close()


def _server(pki: Path, web_yml: str) -> ExporterHTTPServer:
    (pki / "tmp-web.yml").write_text(web_yml)
    sec = load_web_config_file(pki / "tmp-web.yml")
    srv = ExporterHTTPServer("127.0.0.1", 0, SnapshotStore(), ssl_context=sec.ssl_context,
                             basic_auth=sec.basic_auth)
    srv.start_background()
    return srv


def test_client_certificates_when_required(pki: Path) -> None:
    srv = _server(pki, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                       "  client_auth_type: RequireAndVerifyClientCert\n"
                       "  client_ca_file: ca.crt\n")
    try:
        assert call(srv.port, "GET", "/healthz", ctx=client_ctx(pki, cert=True)).status == 200
        with pytest.raises((http.client.HTTPException, OSError)):
            call(srv.port, "GET", "/healthz", ctx=client_ctx(pki))
        assert call(srv.port, "GET", "/healthz", ctx=client_ctx(pki, cert=True)).status == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_min_version_tls13_refuses_tls12(pki: Path) -> None:
    srv = _server(pki, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                       "  min_version: TLS13\n")
    try:
        old = client_ctx(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((http.client.HTTPException, OSError)):
            call(srv.port, "GET", "/healthz", ctx=old)
        assert call(srv.port, "GET", "/healthz", ctx=client_ctx(pki)).status == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_successful_checks_are_cached_failures_never(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    now = [1000.0]
    auth = BasicAuth({USER: HASH, "other": HASH}, ttl_s=60, now=lambda: now[0])
    for _ in range(3):
        assert auth.check(basic(USER, PASSWORD))
    assert len(calls) == 1  # one bcrypt for three scrapes
    for _ in range(3):
        assert not auth.check(basic(USER, "wrong"))
    assert len(calls) == 4  # every failure pays in full
    assert not auth.check(basic("mallory", PASSWORD))  # unknown user: a real bcrypt too
    assert len(calls) == 5
    assert not auth.check(basic(USER, "x" * 100))  # over bcrypt's 72 bytes: refused, no error
    now[0] += 61
    assert auth.check(basic(USER, PASSWORD))
    assert len(calls) == 7  # the cached success expired


# --- the API token --------------------------------------------------------------------------------
WRITES = [("PUT", "/api/v1/workers/{w}", True), ("POST", "/api/v1/workers/{w}/heartbeat", False),
          ("DELETE", "/api/v1/workers/{w}", False)]


@pytest.mark.parametrize(("method", "path", "with_body"), WRITES, ids=[m for m, _, _ in WRITES])
def test_token_required_for_writes(secure: Service, pki: Path, method: str, path: str,
                                   with_body: bool) -> None:
    w = f"w-{method.lower()}"
    if method != "PUT":  # something to heartbeat or delete
        secure.api.handle("PUT", f"/api/v1/workers/{w}", worker_body(w))
    ctx, url = client_ctx(pki), path.format(w=w)
    body = worker_body(w) if with_body else None
    for bad in ({}, {"X-DRM-Token": "wrong"}, {"X-DRM-Token": CONFIG_TOKEN[:-1]}):
        r = call(port(secure), method, url, ctx=ctx, headers=AUTH | bad, body=body)
        assert r.status == 401, bad
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["error"]["status"] == 401
    r = call(port(secure), method, url, ctx=ctx, headers=AUTH | {"X-DRM-Token": CONFIG_TOKEN},
             body=body)
    assert 200 <= r.status < 300, r.body
    assert (w in secure.engine.workers()) == (method != "DELETE")
    # reading needs no token
    assert call(port(secure), "GET", "/api/v1/workers", ctx=ctx, headers=AUTH).status == 200


def test_http_client_sends_the_token_beside_basic_auth(secure: Service, pki: Path) -> None:
    base = f"https://127.0.0.1:{port(secure)}"
    c = HttpClient(base, token=CONFIG_TOKEN, ssl_context=client_ctx(pki),
                   basic_auth=(USER, PASSWORD))
    spec = WorkerSpec("w-client", "cpu", "aws", "us-east-1", "m5.2xlarge", "w.test", 8, 2**30, 0)
    assert c.put_worker(spec) is True
    c.heartbeat("w-client")
    assert "w-client" in [w["worker"] for w in c.workers()]
    no_token = HttpClient(base, ssl_context=client_ctx(pki), basic_auth=(USER, PASSWORD))
    with pytest.raises(ApiError) as e:
        no_token.deregister("w-client")
    assert e.value.status == 401
    assert c.deregister("w-client") == []


@pytest.fixture
def env_token_service() -> Iterator[Service]:
    svc = Service(quiet_config(api=ApiConfig(token=CONFIG_TOKEN)),
                  environ={API_TOKEN_ENV: ENV_TOKEN})
    svc.start()
    yield svc
    svc.stop()


def test_env_token_overrides_config(env_token_service: Service) -> None:
    p, url = port(env_token_service), "/api/v1/workers/w-env"
    for token in (CONFIG_TOKEN, "", "wrong"):
        r = call(p, "PUT", url, ctx=None, headers={"Authorization": f"Bearer {token}"},
                 body=worker_body("w-env"))
        assert r.status == 401, token
    r = call(p, "PUT", url, ctx=None, headers={"Authorization": f"Bearer {ENV_TOKEN}"},
             body=worker_body("w-env"))
    assert r.status in (200, 201)
    # X-DRM-Token works without basic auth too
    r = call(p, "POST", url + "/heartbeat", ctx=None, headers={"X-DRM-Token": ENV_TOKEN})
    assert 200 <= r.status < 300


def test_token_resolution() -> None:
    cfg = ApiConfig(token=CONFIG_TOKEN)
    assert api_token(cfg, {API_TOKEN_ENV: ENV_TOKEN}) == ENV_TOKEN
    assert api_token(cfg, {}) == CONFIG_TOKEN
    assert api_token(cfg, {API_TOKEN_ENV: ""}) == CONFIG_TOKEN  # blank cannot switch it off
    assert api_token(ApiConfig(), {}) == ""


# --- web config errors ----------------------------------------------------------------------------
TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("tls_config: {}\n", "web.yml:1: tls_config: unknown key (known: basic_auth_users, "
                         "tls_server_config)"),
    ("tls_server_config:\n  cert_file: server.crt\n  keyfile: server.key\n",
     "web.yml:3: tls_server_config.keyfile: unknown key"),
    (TLS + "  min_version: TLS11\n",
     "web.yml:4: tls_server_config.min_version: expected one of TLS12, TLS13, got 'TLS11'"),
    (TLS + "  client_auth_type: RequireAnyClientCert\n",
     "web.yml:4: tls_server_config.client_auth_type: expected one of NoClientCert, "),
    (TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
     "web.yml:2: tls_server_config.client_ca_file: required with client_auth_type "
     "RequireAndVerifyClientCert"),
    ("tls_server_config:\n  cert_file: server.crt\n",
     "web.yml:2: tls_server_config.key_file: required"),
    ("tls_server_config: [server.crt]\n", "web.yml:1: tls_server_config: expected a mapping"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
     "web.yml:2: tls_server_config.cert_file: cannot read "),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: nope.key\n",
     "web.yml:3: tls_server_config.key_file: cannot read "),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
     "web.yml:2: tls_server_config.cert_file: "),
    (TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: server.key\n",
     "web.yml:5: tls_server_config.client_ca_file: cannot load "),
    (f"basic_auth_users:\n  {USER}: {HASH}\n  bob: hunter2\n",
     "web.yml:3: basic_auth_users.bob: not a bcrypt hash"),
    (f"basic_auth_users:\n  'a:b': {HASH}\n", "web.yml:2: basic_auth_users.a:b: a user name"),
    ("basic_auth_users: [alice]\n", "web.yml:1: basic_auth_users: expected a mapping"),
    ("basic_auth_users:\n  alice: 42\n", "web.yml:2: basic_auth_users.alice: not a bcrypt"),
    ("tls_server_config: {cert_file: [1\n", "web.yml:2: not valid YAML"),
], ids=lambda v: v if len(v) < 40 else None)
def test_web_config_errors_name_key_and_line(pki: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_web_config(text, "web.yml", pki)
    assert str(e.value).startswith(expected), str(e.value)
    assert "hunter2" not in str(e.value)  # a pasted plain password is not echoed


def test_serve_exits_2_on_a_bad_web_config(tmp_path: Path, pki: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: k.key\n")
    serve = [sys.executable, "-m", "drm_exporter.cli", "serve", "--no-host-worker",
             "--listen-address", "127.0.0.1:0"]
    p = subprocess.run(serve + ["--web.config.file", str(web)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr
    assert f"{web}:2: tls_server_config.cert_file: cannot read {tmp_path}/missing.crt" \
        in p.stderr
    # the config key, relative to the config file's folder
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "exporter.yml"
    cfg.write_text("web_config_file: ../web.yml\n")
    assert load_config_file(cfg).web_config_file == str(tmp_path / "sub" / ".." / "web.yml")
    p = subprocess.run(serve + ["--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr
    assert "tls_server_config.cert_file: cannot read" in p.stderr
    (tmp_path / "typo.yml").write_text("basic_auth_user: {}\n")
    p = subprocess.run(serve + ["--web.config.file", str(tmp_path / "typo.yml")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "typo.yml:1: basic_auth_user: unknown key" in p.stderr


# --- secrets out of the logs ----------------------------------------------------------------------
def test_no_token_or_password_in_the_logs(secure: Service, pki: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    ctx, p = client_ctx(pki), port(secure)
    wrong = {"Authorization": basic(USER, PASSWORD + "-typo")}
    call(p, "GET", "/metrics", ctx=ctx, headers=AUTH)
    call(p, "GET", "/metrics", ctx=ctx, headers=wrong)
    call(p, "PUT", "/api/v1/workers/w-log", ctx=ctx, body=worker_body("w-log"),
         headers=AUTH | {"X-DRM-Token": CONFIG_TOKEN})
    call(p, "PUT", "/api/v1/workers/w-log", ctx=ctx, body=worker_body("w-log"),
         headers=AUTH | {"X-DRM-Token": CONFIG_TOKEN + "-typo"})
    call(p, "PUT", "/api/v1/workers/w-log", ctx=ctx, body={"pool": 1},  # a refused body
         headers=AUTH | {"X-DRM-Token": CONFIG_TOKEN})
    call(p, "POST", "/api/v1/workers/w-log/heartbeat", ctx=ctx,
         headers={"Authorization": f"Bearer {CONFIG_TOKEN}"})
    with pytest.raises((http.client.HTTPException, OSError)):
        call(p, "GET", "/metrics", ctx=None, headers=AUTH)  # plain HTTP: a handshake error
    time.sleep(0.2)  # the server thread logs the handshake failure after closing
    logged = caplog.text + "".join(capfd.readouterr())
    assert "GET /metrics" in logged and "PUT /api/v1/workers/w-log" in logged  # logging is on
    assert "TLS handshake failed" in logged
    secrets = [PASSWORD, CONFIG_TOKEN, AUTH["Authorization"].split()[1],
               wrong["Authorization"].split()[1], HASH]
    for s in secrets:
        assert s not in logged, f"secret {s[:6]}... in the log"


def test_serve_logs_where_the_token_comes_from_not_what_it_is(tmp_path: Path,
                                                              pki: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(WEB_YML.replace("server.", f"{pki}/server."))
    cmd = [sys.executable, "-m", "drm_exporter.cli", "--log-level", "debug", "serve",
           "--no-host-worker", "--listen-address", "127.0.0.1:0", "--web.config.file", str(web)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {API_TOKEN_ENV: ENV_TOKEN})
    watchdog = threading.Timer(30, proc.kill)  # never hang the suite on a server that hangs
    watchdog.start()
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "API write endpoints" in line:
                break
    finally:
        proc.terminate()
        lines.append(proc.communicate(timeout=30)[1])  # stop latency is test_state's job
        watchdog.cancel()
    logged = "".join(lines)
    assert "serving /metrics on https://" in logged, logged
    assert f"basic auth on; API write endpoints need the token from {API_TOKEN_ENV}" in logged
    assert ENV_TOKEN not in logged and HASH not in logged
