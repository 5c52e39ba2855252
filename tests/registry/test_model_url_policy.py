"""Registering a model by URL cannot make the control plane read its disk or internal services.

Real HTTP servers on loopback addresses stand in for internal services: they count what
they receive, so "refused" also means "never contacted". The allowed cases use the settings
an operator would (``model_url_schemes``, ``model_url_private_networks``).
"""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from tests.servers import run_control_plane

from modelyard.artifact_urls import DEFAULT_SCHEMES, UrlPolicy, parse_networks
from modelyard.artifacts import ArtifactStore
from modelyard.errors import BadRequest
from modelyard.registry import ModelCreate, ModelRegistry
from modelyard.settings import Settings
from modelyard.store import Database, upgrade

PAYLOAD = b"onnx" * 1000


@dataclass
class Site:
    """A real HTTP server: ``/net.onnx`` answers :data:`PAYLOAD`, ``redirects`` answer 302."""

    host: str
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    """``(path, Host header)`` of every request received."""
    port: int = 0

    def url(self, path: str = "/net.onnx", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


@contextmanager
def serve(
    host: str = "127.0.0.1", redirects: dict[str, str] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[Site]:
    site = Site(host, dict(redirects or {}))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.seen.append((self.path, self.headers.get("host", "")))
            if self.path in site.redirects:
                self.send_response(302)
                self.send_header("location", site.redirects[self.path])
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path == "/net.onnx":
                self.send_response(200)
                self.send_header("content-length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    site.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator[Callable[[UrlPolicy], ModelRegistry]]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(db)

    def make(policy: UrlPolicy) -> ModelRegistry:
        return ModelRegistry(db, ArtifactStore(str(tmp_path / "artifacts"), url_policy=policy))

    yield make
    db.dispose()


def register(registry: ModelRegistry, url: str) -> Any:
    return registry.create(ModelCreate(name="net", framework="onnx", url=url))


# -- schemes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/hostname", "has scheme 'file', which the control plane does not fetch"),
        ("/etc/hostname", "is a path on the control plane's disk"),
        ("etc/hostname", "is a path on the control plane's disk"),
        ("local:///etc/hostname", "has scheme 'local'"),
        ("FILE:///etc/passwd", "has scheme 'file'"),
        ("memory://bucket/x", "has scheme 'memory'"),
        ("ftp://example.com/x", "has scheme 'ftp'"),
        ("simplecache::https://example.com/x", "has scheme 'simplecache'"),
        ("s3://bucket/key::file:///etc/hostname", r"chained fsspec URLs \('::'\) are not accepted"),
        ("http:///no-host", "has no host"),
        ("http://example.com/a b", "contains spaces or control characters"),
    ],
)
def test_only_listed_schemes_are_fetched(url: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        UrlPolicy().check(url)


def test_the_refusal_says_what_is_accepted_and_how_to_upload_instead() -> None:
    with pytest.raises(BadRequest) as info:
        UrlPolicy().check("file:///etc/hostname")
    assert str(info.value) == (
        "model url 'file:///etc/hostname' has scheme 'file', which the control plane does not fetch "
        "(accepted: abfs, abfss, az, gcs, gs, http, https, s3; MODELYARD_MODEL_URL_SCHEMES lists them); "
        "upload a local file instead (POST /api/artifacts, modelyard model upload --path)"
    )


def test_object_store_urls_pass_the_scheme_check() -> None:
    for url in ("s3://bucket/m.onnx", "gs://b/m.onnx", "az://c/m.onnx", "https://example.com/m.onnx"):
        assert UrlPolicy().check(url) == url.split(":", 1)[0]


# -- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped: checked as the IPv4 address
        ("10.1.2.3", "a private address"),
        ("192.168.0.10", "a private address"),
        ("fd00::1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("100.64.0.1", "not a public address"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    problem = UrlPolicy().address_problem(ipaddress.ip_address(address))
    assert problem is not None and problem.startswith(kind)
    assert "MODELYARD_MODEL_URL_PRIVATE_NETWORKS" in problem


def test_public_addresses_and_listed_networks_pass() -> None:
    assert UrlPolicy().address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert UrlPolicy().address_problem(ipaddress.ip_address("2606:4700::1111")) is None
    allowed = UrlPolicy(private_networks=parse_networks(["10.0.0.0/8"]))
    assert allowed.address_problem(ipaddress.ip_address("10.9.9.9")) is None
    assert allowed.address_problem(ipaddress.ip_address("192.168.0.1")) is not None


def test_hosts_are_resolved_before_the_check() -> None:
    """``localhost`` and the decimal form of 127.0.0.1 are loopback too."""
    for host in ("localhost", "2130706433"):
        with pytest.raises(BadRequest, match=r"is a loopback address \(127\.0\.0\.1\)"):
            UrlPolicy().resolve("model url", host, 80)


# -- fetching -----------------------------------------------------------------------------------


def test_loopback_http_is_refused_without_a_request(make_registry: Callable[..., ModelRegistry]) -> None:
    registry = make_registry(UrlPolicy())
    with serve() as site:
        with pytest.raises(BadRequest) as info:
            register(registry, site.url())
        assert site.seen == []
    assert str(info.value) == (
        f"model url '{site.url()}': host is a loopback address (127.0.0.1); the control plane fetches "
        "only from public addresses unless MODELYARD_MODEL_URL_PRIVATE_NETWORKS lists the network"
    )


def test_an_allowed_network_is_fetched_with_its_host_name_kept(
    make_registry: Callable[..., ModelRegistry],
) -> None:
    registry = make_registry(UrlPolicy(private_networks=parse_networks(["127.0.0.0/8"])))
    with serve() as site:
        model = register(registry, site.url(host="localhost"))
    assert model.artifact.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert model.artifact.filename == "net.onnx"
    # sent to the checked address, with the name the caller gave in Host
    assert site.seen == [("/net.onnx", f"localhost:{site.port}")]


def test_https_keeps_the_host_name_for_tls(
    make_registry: Callable[..., ModelRegistry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes to the checked address, yet the certificate is verified for the name."""
    ca = trustme.CA()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_tls)
    names: list[str | None] = []

    def seen_name(_sock: ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = seen_name
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # httpx trusts the test CA
    registry = make_registry(UrlPolicy(private_networks=parse_networks(["127.0.0.0/8"])))
    with serve(tls=server_tls) as site:
        url = f"https://localhost:{site.port}/net.onnx"
        assert register(registry, url).artifact.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
        assert names == ["localhost"] and site.seen == [("/net.onnx", f"localhost:{site.port}")]
        with pytest.raises(BadRequest, match="certificate verify failed"):  # issued for localhost only
            register(registry, f"https://127.0.0.1:{site.port}/net.onnx")


def test_every_redirect_is_checked(make_registry: Callable[..., ModelRegistry]) -> None:
    """127.0.0.1 is allowed, 127.0.0.2 is not: a redirect there is refused before connecting."""
    registry = make_registry(UrlPolicy(private_networks=parse_networks(["127.0.0.1/32"])))
    with serve("127.0.0.2") as internal, serve() as front:
        front.redirects["/to-internal"] = internal.url()
        front.redirects["/to-file"] = "file:///etc/hostname"
        front.redirects["/to-front"] = "/net.onnx"
        with pytest.raises(BadRequest) as info:
            register(registry, front.url("/to-internal"))
        assert str(info.value).startswith(
            f"model url '{front.url('/to-internal')}' (redirected to '{internal.url()}'): host is a "
            "loopback address (127.0.0.2)"
        )
        assert internal.seen == []
        with pytest.raises(BadRequest, match=r"redirects to 'file:///etc/hostname'; only http\(s\)"):
            register(registry, front.url("/to-file"))
        model = register(registry, front.url("/to-front"))
    assert model.artifact.size == len(PAYLOAD)


def test_local_paths_only_when_file_is_listed(
    make_registry: Callable[..., ModelRegistry], tmp_path: Path
) -> None:
    src = tmp_path / "clf.onnx"
    src.write_bytes(PAYLOAD)
    with pytest.raises(BadRequest, match="path on the control plane's disk"):
        register(make_registry(UrlPolicy()), str(src))
    allowing = make_registry(UrlPolicy(schemes=frozenset({*DEFAULT_SCHEMES, "file"})))
    assert register(allowing, src.as_uri()).artifact.size == len(PAYLOAD)


def test_settings_build_the_policy(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        model_url_schemes="https, FILE",
        model_url_private_networks="10.0.0.0/8, 127.0.0.1",
        _env_file=None,  # type: ignore[call-arg]
    )
    policy = UrlPolicy.from_settings(settings)
    assert policy.schemes == {"https", "file"}
    assert [str(n) for n in policy.private_networks] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert UrlPolicy.from_settings(Settings(home=tmp_path, _env_file=None)) == UrlPolicy()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"'10\.0\.0/33' is not an IP network"):
        Settings(home=tmp_path, model_url_private_networks="10.0.0/33", _env_file=None)  # type: ignore[call-arg]


# -- through the REST API -----------------------------------------------------------------------


@pytest.mark.slow
def test_rest_registration_refuses_local_and_internal_urls(settings: Settings, tmp_path: Path) -> None:
    with serve() as site, run_control_plane(settings) as control:
        admin = {"authorization": f"Bearer {control.admin_token}"}
        for url, message in [
            ("file:///etc/hostname", "has scheme 'file'"),
            ("/etc/hostname", "is a path on the control plane's disk"),
            (site.url(), "host is a loopback address (127.0.0.1)"),
            ("http://169.254.169.254/latest/meta-data/", "host is a link-local address"),
        ]:
            body = {"name": "m", "framework": "onnx", "url": url}
            r = httpx.post(f"{control.url}/api/models", json=body, headers=admin, timeout=30)
            assert r.status_code == 400, (url, r.text)
            assert r.json()["kind"] == "bad_request" and message in r.json()["error"], r.text
        assert site.seen == []
        assert httpx.get(f"{control.url}/api/models", headers=admin, timeout=30).json() == []


@pytest.mark.slow
def test_rest_registration_from_an_allowed_local_server(settings: Settings) -> None:
    allowing = settings.model_copy(update={"model_url_private_networks": ["127.0.0.1/32"]})
    with serve() as site, run_control_plane(allowing) as control:
        admin = {"authorization": f"Bearer {control.admin_token}"}
        body = {"name": "net", "framework": "onnx", "url": site.url()}
        r = httpx.post(f"{control.url}/api/models", json=body, headers=admin, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["artifact"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
