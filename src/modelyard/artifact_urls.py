"""Which model URLs the control plane may fetch (``POST /api/models`` with ``url``).

The control plane fetches a caller-chosen URL with its own network position and its own
credentials, so an unchecked URL is a server-side request forgery: ``file:///etc/hostname``
or a bare path reads its disk, ``http://169.254.169.254/`` a cloud metadata service,
``http://10.0.0.5/admin`` an internal service, and the answer becomes a downloadable
artifact. :class:`UrlPolicy` therefore accepts only listed schemes (http(s) and the object
stores by default; ``file`` and others only when the operator lists them) and, for http(s),
only hosts whose every address is public unless a configured network allows it. The check
happens per connection, not only per URL: the host is resolved once, every address
checked, and the request sent to that checked address (``Host`` header and TLS name kept),
so DNS that answers differently the second time cannot slip an internal address in; each
redirect is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx

from modelyard.errors import BadRequest

if TYPE_CHECKING:
    from modelyard.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs", "abfss")
"""http(s) and the object stores fsspec reads with their packages installed."""

HTTP_SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 5


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (``10.0.0.0/8``, ``127.0.0.1``, ``fd00::/8``); ``ValueError`` naming a bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP network such as 10.0.0.0/8: {exc}") from None
    return tuple(out)


def _describe(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    return "not a public address"


@dataclass(frozen=True)
class UrlPolicy:
    """Accepted schemes and the non-public networks http(s) may still reach."""

    schemes: frozenset[str] = frozenset(DEFAULT_SCHEMES)
    private_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(
            schemes=frozenset(s.lower() for s in settings.model_url_schemes),
            private_networks=parse_networks(settings.model_url_private_networks),
        )

    @property
    def any_address(self) -> bool:
        """Both ``0.0.0.0/0`` and ``::/0`` are allowed: no resolution, no address pinning
        (for a control plane that reaches the web only through a proxy)."""
        versions = {n.version for n in self.private_networks if n.prefixlen == 0}
        return versions == {4, 6}

    # -- schemes ------------------------------------------------------------------------

    def check(self, url: str) -> str:
        """The scheme of ``url`` when it may be fetched at all; :class:`BadRequest` naming why not.

        A bare path counts as ``file``. Only the scheme and shape are checked here; http(s)
        addresses are checked when connecting (:meth:`pinned_request`).
        """
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise BadRequest(f"model url {url!r} contains spaces or control characters")
        scheme = urlsplit(url).scheme.lower()
        local = len(scheme) <= 1  # no scheme, or a Windows drive letter
        if local:
            scheme = "file"
        if scheme not in self.schemes:
            accepted = ", ".join(sorted(self.schemes)) or "none"
            what = "is a path on the control plane's disk" if local else f"has scheme {scheme!r}"
            hint = (
                "; upload a local file instead (POST /api/artifacts, modelyard model upload --path)"
                if scheme in ("file", "local")
                else ""
            )
            raise BadRequest(
                f"model url {url!r} {what}, which the control plane does not fetch (accepted: "
                f"{accepted}; MODELYARD_MODEL_URL_SCHEMES lists them){hint}"
            )
        if scheme in HTTP_SCHEMES:
            if not urlsplit(url).hostname:
                raise BadRequest(f"model url {url!r} has no host")
        elif "::" in url:
            raise BadRequest(f"model url {url!r}: chained fsspec URLs ('::') are not accepted")
        return scheme

    # -- addresses ------------------------------------------------------------------------

    def address_problem(self, ip: IPAddress) -> str | None:
        """Why the control plane must not connect to ``ip``, or ``None``."""
        checked: IPAddress = ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            checked = ip.ipv4_mapped
        if checked.is_global and not checked.is_multicast:
            return None
        if any(checked in net for net in self.private_networks if net.version == checked.version):
            return None
        return (
            f"{_describe(checked)} ({checked}); the control plane fetches only from public "
            "addresses unless MODELYARD_MODEL_URL_PRIVATE_NETWORKS lists the network"
        )

    def resolve(self, what: str, host: str, port: int) -> IPAddress:
        """The address to connect to for ``host``: every address it resolves to must pass.

        ``what`` starts the error message (``model url 'http://...'``)."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise BadRequest(f"{what}: cannot resolve host {host!r}: {exc}") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise BadRequest(f"{what}: host {host!r} has no address")
        for ip in addresses:
            problem = self.address_problem(ip)
            if problem is not None:
                shown = f"host {host!r}" if literal is None else "host"
                raise BadRequest(f"{what}: {shown} is {problem}")
        return addresses[0]

    def pinned_request(self, client: httpx.Client, url: str, what: str | None = None) -> httpx.Request:
        """A GET of ``url`` sent to the address :meth:`resolve` checked, with the original
        ``Host`` header and TLS server name, so the name is not resolved a second time."""
        what = what or f"model url {url!r}"
        if self.check(url) not in HTTP_SCHEMES:
            raise BadRequest(f"{what} is not http(s)")
        target = httpx.URL(url)
        if self.any_address:
            return client.build_request("GET", target)
        ip = self.resolve(what, target.host, target.port or (443 if target.scheme == "https" else 80))
        pinned = target.copy_with(host=str(ip))
        headers = {"host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        return client.build_request("GET", pinned, headers=headers, extensions=extensions)

    def redirect(self, url: str, location: str | None) -> str:
        """The absolute URL a redirect from ``url`` points at, if http(s) may go there."""
        if not location:
            raise BadRequest(f"model url {url!r} redirects without a Location")
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in HTTP_SCHEMES:
            raise BadRequest(
                f"model url {url!r} redirects to {target!r}; only http(s) redirects are followed"
            )
        return target
