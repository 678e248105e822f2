"""The guard on inputs by reference: which URLs the server may read, checked before any connection.

A reference is read only when it starts with a prefix of the allowlist
(``ATTNSERVE_INPUT_ALLOWLIST``), compared part by part (scheme, host, port,
path), so ``https://good.example@evil.example/`` or ``https://good.example.evil/``
never pass for ``https://good.example/``. The host of an ``http(s)`` reference
is resolved here, and the connection goes to the address checked (never
resolved again by someone else): a private, loopback, link-local or other
non-public address is refused unless the matching prefix names that very
address. Redirects are followed by the reader only after each hop passes here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.errors import Forbidden

SCHEMES = ("https", "http", "s3")
DEFAULT_PORTS = {"https": 443, "http": 80}

Resolver = Callable[..., list[tuple[Any, ...]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Location:
    """A URL in parts: scheme, lower-case host (bucket for s3), port, path."""

    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, url: str) -> Location:
        """The parts of ``url``; Forbidden for anything but a plain https, http or s3 URL."""
        if not isinstance(url, str) or not url or len(url) > 4096:
            raise Forbidden("a reference must be an https:// or s3:// URL")
        if any(c.isspace() or ord(c) < 32 for c in url) or "\\" in url:
            raise Forbidden("a reference must be an https:// or s3:// URL without spaces")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise Forbidden("the reference is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            # file://, /vsicurl/..., ftp://, a relative path: none is ever read.
            raise Forbidden("a reference must be an https:// or s3:// URL")
        if parts.username is not None or parts.password is not None:
            raise Forbidden("a reference must not carry credentials")
        if not parts.hostname:
            raise Forbidden("the reference has no host")
        if scheme == "s3" and (port is not None or parts.query or parts.fragment):
            raise Forbidden("an s3:// reference is s3://bucket/key, nothing more")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if scheme != "s3" and port is None:
            port = DEFAULT_PORTS[scheme]
        return cls(scheme, parts.hostname.lower(), port, path)

    def under(self, prefix: Location) -> bool:
        """Whether this URL lies under ``prefix``."""
        return (
            (self.scheme, self.host, self.port) == (prefix.scheme, prefix.host, prefix.port)
        ) and self.path.startswith(prefix.path)

    def literal(self) -> IPAddress | None:
        """The host as an IP address, when it is one."""
        try:
            return ipaddress.ip_address(self.host.strip("[]"))
        except ValueError:
            return None


@dataclass(frozen=True)
class Target:
    """A reference that passed the guard: where it is, and the address to connect to."""

    url: str
    location: Location
    address: str | None  # None for s3: the store's endpoint is the operator's, not the user's


def public(address: IPAddress) -> bool:
    """Whether an address is a public unicast one (no private, loopback, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


class ReferenceGuard:
    """Checks references against the allowlist and where their hosts resolve.

    Args:
        allowlist: URL prefixes that may be read (empty: references are off).
        resolve: ``socket.getaddrinfo`` or a stand-in with its signature.
    """

    def __init__(self, allowlist: Sequence[str], resolve: Resolver = socket.getaddrinfo) -> None:
        self.prefixes = [Location.parse(p) for p in allowlist]
        self.resolve = resolve

    @property
    def enabled(self) -> bool:
        """Whether any reference may be read at all."""
        return bool(self.prefixes)

    def check(self, url: str) -> Target:
        """The target of ``url`` if it may be read; Forbidden (403) otherwise.

        Nothing is connected to here; the host is only resolved, and only once
        the URL is inside the allowlist.
        """
        if not self.enabled:
            raise Forbidden(
                "inputs by reference are off on this server (ATTNSERVE_INPUT_ALLOWLIST is unset)"
            )
        location = Location.parse(url)
        prefix = next((p for p in self.prefixes if location.under(p)), None)
        if prefix is None:
            raise Forbidden("the reference is outside the server's allowlist of input URLs")
        if location.scheme == "s3":
            return Target(url, location, None)
        return Target(url, location, self._address(location, prefix))

    def _address(self, location: Location, prefix: Location) -> str:
        """The address to connect to: every address the host resolves to must be allowed."""
        literal = location.literal()
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = self.resolve(location.host, location.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise Forbidden("the reference's host does not resolve") from None
            addresses = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
        if not addresses:
            raise Forbidden("the reference's host does not resolve")
        named = prefix.literal()
        for address in addresses:
            if not public(address) and address != named:
                raise Forbidden(
                    "the reference's host resolves to a private, loopback or link-local "
                    "address that the allowlist does not name"
                )
        return str(addresses[0])
