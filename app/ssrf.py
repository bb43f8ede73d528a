"""Where the service may send requests of its own (webhooks): http(s) URLs whose every address
is public, as imgproxy's `VerifySourceNetwork` decides for its sources.

A URL is checked at submit and again when connecting, since DNS may answer differently in
between; the delivery then connects to the very address that was checked. Addresses are
refused when they are loopback, private, link-local (the cloud metadata address
169.254.169.254 included), multicast, reserved, unspecified or otherwise not global, also
when an IPv4 address hides inside IPv6 (`::ffff:127.0.0.1`, 6to4, Teredo, NAT64) or is spelled
the old ways `inet_aton` still reads (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx
import trio

__all__ = [
    "Address",
    "ForbiddenDestination",
    "Resolver",
    "check_url",
    "forbidden_reason",
    "literal_address",
    "resolve_public",
    "system_resolver",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Host and port to the addresses they resolve to (a seam: tests answer what they like).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class ForbiddenDestination(Exception):
    """The URL may not be sent to; the message says why (and never resolves anything)."""


def check_url(url: str, *, allow_private: bool) -> httpx.URL:
    """`url` parsed, if it is http(s) with a host whose literal address (if it is one) is
    allowed; a host name is checked when it is resolved (`resolve_public`)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ForbiddenDestination(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ForbiddenDestination(f"only http and https URLs are allowed, not {parsed.scheme!r}")
    if not parsed.host:
        raise ForbiddenDestination("the URL has no host")
    if parsed.userinfo:
        raise ForbiddenDestination("credentials in the URL are not allowed")
    address = literal_address(parsed.host)
    if address is not None and not allow_private:
        reason = forbidden_reason(address)
        if reason is not None:
            raise ForbiddenDestination(f"{parsed.host} is {reason}")
    return parsed


def literal_address(host: str) -> Address | None:
    """The address `host` spells, in any spelling a resolver would accept; None for names."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:  # the legacy forms: 127.1, 0x7f000001, 2130706433, 0177.0.0.1
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: Address) -> str | None:
    """Why `address` is not a public destination, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = forbidden_reason(inner)
            return None if reason is None else f"{reason} (as {inner}, inside an IPv6 address)"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address (cloud metadata lives there)"),
        ("is_private", "a private address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "the unspecified address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    return None if address.is_global else "not a global address"


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives for `host`, without blocking trio."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_public(
    url: httpx.URL, *, allow_private: bool, resolver: Resolver = system_resolver
) -> Address:
    """The address to connect to for `url`: its literal address or, for a name, the first
    address it resolves to, after checking every one (a name with one private address among
    public ones is refused: which one a client picks is not ours to know)."""
    address = literal_address(url.host)
    if address is not None:
        candidates = [address]
    else:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            candidates = [
                ipaddress.ip_address(a.split("%")[0]) for a in await resolver(url.host, port)
            ]
        except OSError as exc:
            raise ForbiddenDestination(f"{url.host} does not resolve: {exc}") from None
        if not candidates:
            raise ForbiddenDestination(f"{url.host} does not resolve to any address")
    if not allow_private:
        for candidate in candidates:
            reason = forbidden_reason(candidate)
            if reason is not None:
                raise ForbiddenDestination(f"{url.host} resolves to {candidate}, {reason}")
    return candidates[0]
