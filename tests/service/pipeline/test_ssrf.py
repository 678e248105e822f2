"""The reference guard: allowlist prefixes compared part by part, addresses after resolution."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from service.errors import Forbidden
from service.pipeline.ssrf import Location, ReferenceGuard, public

ALLOW = [
    "https://imagery.example.com/cogs/",
    "http://127.0.0.1:8080/",
    "s3://my-bucket/scenes/",
]


def _resolving(*addresses: str) -> Any:
    """A resolver with getaddrinfo's signature that answers ``addresses`` for any name."""

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "https:// or s3://"),
        ("/vsicurl/https://imagery.example.com/cogs/a.tif", "https:// or s3://"),
        ("/vsis3/my-bucket/scenes/a.tif", "https:// or s3://"),
        ("ftp://imagery.example.com/cogs/a.tif", "https:// or s3://"),
        ("https://user:pw@imagery.example.com/cogs/a.tif", "credentials"),
        ("https://imagery.example.com:notaport/cogs/a.tif", "not a valid URL"),
        ("https://imagery.example.com/cogs/a b.tif", "without spaces"),
        ("https://imagery.example.com.evil.net/cogs/a.tif", "allowlist"),
        ("https://imagery.example.com@evil.net/cogs/a.tif", "credentials"),
        ("https://imagery.example.com:8443/cogs/a.tif", "allowlist"),
        ("https://imagery.example.com/other/a.tif", "allowlist"),
        ("http://imagery.example.com/cogs/a.tif", "allowlist"),
        ("s3://my-bucket/elsewhere/a.tif", "allowlist"),
        ("s3://other-bucket/scenes/a.tif", "allowlist"),
        ("http://127.0.0.1:8081/a.tif", "allowlist"),
        ("http://localhost:8080/a.tif", "allowlist"),
    ],
)
def test_urls_outside_the_allowlist_are_refused_unresolved(url: str, why: str) -> None:
    asked: list[str] = []

    def resolve(host: str, *_: Any, **__: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return []

    with pytest.raises(Forbidden, match=why):
        ReferenceGuard(ALLOW, resolve).check(url)
    assert asked == []


def test_allowed_urls_pass_with_the_address_to_connect_to() -> None:
    guard = ReferenceGuard(ALLOW, _resolving("93.184.215.14"))
    target = guard.check("https://IMAGERY.example.com/cogs/a.tif?x=1")
    assert target.address == "93.184.215.14"
    assert target.location == Location("https", "imagery.example.com", 443, "/cogs/a.tif?x=1")
    s3 = guard.check("s3://my-bucket/scenes/2024/a.tif")
    assert s3.address is None
    assert s3.location.path == "/scenes/2024/a.tif"
    # A private address named by the prefix itself.
    assert guard.check("http://127.0.0.1:8080/a.tif").address == "127.0.0.1"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.4", "169.254.169.254", "0.0.0.0", "::1"],
)
def test_allowed_names_resolving_to_non_public_addresses_are_refused(address: str) -> None:
    guard = ReferenceGuard(ALLOW, _resolving("93.184.215.14", address))
    with pytest.raises(Forbidden, match="private, loopback or link-local"):
        guard.check("https://imagery.example.com/cogs/a.tif")


def test_a_name_for_loopback_is_refused_even_when_listed() -> None:
    # localhost resolves (here, for real) to loopback; only a prefix naming the address allows it.
    guard = ReferenceGuard(["http://localhost:8080/", "http://127.0.0.1:8080/"])
    with pytest.raises(Forbidden, match="loopback"):
        guard.check("http://localhost:8080/a.tif")


def test_names_that_do_not_resolve_are_refused() -> None:
    def fail(*_: Any, **__: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror("no such name")

    with pytest.raises(Forbidden, match="does not resolve"):
        ReferenceGuard(ALLOW, fail).check("https://imagery.example.com/cogs/a.tif")


def test_references_are_off_without_an_allowlist() -> None:
    guard = ReferenceGuard([])
    assert not guard.enabled
    with pytest.raises(Forbidden, match="ATTNSERVE_INPUT_ALLOWLIST"):
        guard.check("https://imagery.example.com/cogs/a.tif")


def test_public_addresses() -> None:
    assert public(ipaddress.ip_address("8.8.8.8"))
    assert not public(ipaddress.ip_address("::ffff:127.0.0.1"))  # IPv4-mapped loopback
    assert not public(ipaddress.ip_address("fd00::1"))
    assert not public(ipaddress.ip_address("fe80::1"))
    assert not public(ipaddress.ip_address("224.0.0.1"))
    assert not public(ipaddress.ip_address("100.64.0.1"))  # carrier-grade NAT
