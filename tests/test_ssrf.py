"""The webhook destination guard: every forbidden address form, spelled every way."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from app.ssrf import ForbiddenDestination, check_url, forbidden_reason, resolve_public

FORBIDDEN_URLS = [
    "http://127.0.0.1/hook",
    "http://127.1/hook",  # inet_aton's short form
    "http://0x7f000001/hook",  # hexadecimal
    "http://2130706433/hook",  # decimal
    "http://0177.0.0.1/hook",  # octal
    "http://0.0.0.0/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[ff02::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/hook",  # 169.254.169.254, mapped
    "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_every_forbidden_address_form_is_refused(url: str) -> None:
    with pytest.raises(ForbiddenDestination):
        check_url(url, allow_private=False)
    if "0177." in url:  # a form httpx itself refuses to send to: refused either way
        with pytest.raises(ForbiddenDestination, match="not a valid URL"):
            check_url(url, allow_private=True)
    else:
        assert check_url(url, allow_private=True).scheme == "http"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/x", "http and https"),
        ("file:///etc/passwd", "http and https"),
        ("gopher://example.com", "http and https"),
        ("http:///nohost", "no host"),
        ("https://user:secret@example.com/", "credentials"),
        ("not a url at all", "http and https"),
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url: str, words: str) -> None:
    with pytest.raises(ForbiddenDestination, match=words):
        check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "http://93.184.216.34:8080/x", "https://[2606:4700::1]/"]
)
def test_public_destinations_pass(url: str) -> None:
    assert check_url(url, allow_private=False).host


def test_a_nat64_address_of_a_public_ipv4_is_public() -> None:
    assert forbidden_reason(ipaddress.ip_address("64:ff9b::5db8:d822")) is None


async def test_a_name_that_resolves_to_loopback_is_refused_when_connecting() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example", 443)
        return ["93.184.216.34", "127.0.0.1"]

    url = check_url("https://hooks.example/x", allow_private=False)  # a name: fine at submit
    with pytest.raises(ForbiddenDestination, match=r"resolves to 127\.0\.0\.1, a loopback"):
        await resolve_public(url, allow_private=False, resolver=resolver)
    allowed = await resolve_public(url, allow_private=True, resolver=resolver)
    assert str(allowed) == "93.184.216.34"


async def test_the_checked_address_is_the_one_returned() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["2606:4700::1111", "93.184.216.34"]

    address = await resolve_public(
        httpx.URL("http://hooks.example:8080/"), allow_private=False, resolver=resolver
    )
    assert address == ipaddress.ip_address("2606:4700::1111")


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(ForbiddenDestination, match="does not resolve"):
        await resolve_public(
            httpx.URL("http://nowhere.invalid/"), allow_private=False, resolver=resolver
        )
