"""Webhook deliveries: Standard Webhooks signatures, one guarded attempt, the retry schedule.

An event is signed once, when the job ends (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the secret of
`WEBHOOK_SECRET`, `whsec_<base64>`), and every retry sends the same bytes under the same id.
An attempt connects only to an address `app.ssrf` has just checked (the URL's host name goes
in `Host` and TLS SNI), follows no redirect, and reads the answer's status line and headers,
never its body: a receiver can cost one connection for the caller's time limit, nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
from typing import Final

import httpx
import msgspec

from app.ssrf import ForbiddenDestination, Resolver, check_url, resolve_public, system_resolver

__all__ = [
    "Attempt",
    "Signer",
    "attempt_delivery",
    "new_webhook_id",
    "next_delay_s",
]

#: The longest wait between two attempts.
MAX_DELAY_S: Final = 3600.0


class Signer:
    """Signs events with a `whsec_<base64>` secret, as Standard Webhooks says."""

    def __init__(self, secret: str) -> None:
        key = secret.removeprefix("whsec_")
        try:
            self._key = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
        except ValueError:
            raise ValueError("a webhook secret is whsec_ followed by base64") from None
        if len(self._key) < 16:
            raise ValueError("a webhook secret needs at least 16 bytes (24 base64 characters)")

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three headers that let a receiver verify `body`."""
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }


def new_webhook_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt came to: `delivered` on any 2xx; else what to show as the last
    answer (`status` of the HTTP answer, or `error`)."""

    delivered: bool
    status: int | None = None
    error: str | None = None

    def describe(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "no answer")


async def attempt_delivery(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    resolver: Resolver = system_resolver,
) -> Attempt:
    """POST `body` to `url` once, at an address checked just now. Never raises for what the
    receiver does (refusing, redirecting, closing, answering slowly or at length); the
    caller bounds the time it may take."""
    try:
        parsed = check_url(url, allow_private=allow_private)
        address = await resolve_public(parsed, allow_private=allow_private, resolver=resolver)
    except ForbiddenDestination as exc:
        return Attempt(delivered=False, error=f"refused: {exc}")
    target = parsed.copy_with(host=str(address))
    request_headers = {
        **headers,
        "Host": parsed.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": "imgjobs-webhooks",
    }
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    try:
        request = client.build_request(
            "POST", target, content=body, headers=request_headers, extensions=extensions
        )
        # Only the status counts: the body is never read (a 10 MB answer costs nothing) and
        # the connection is dropped.
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
    except httpx.HTTPError as exc:
        return Attempt(delivered=False, error=f"{type(exc).__name__}: {exc}"[:200])
    return Attempt(delivered=200 <= response.status_code < 300, status=response.status_code)


def next_delay_s(attempts: int, *, base_s: float, rng: random.Random | None = None) -> float:
    """How long to wait after `attempts` failed attempts: `base_s`, then doubling, at most an
    hour, each with +-20% jitter (so that receivers coming back are not hit all at once)."""
    delay = min(MAX_DELAY_S, base_s * 2.0 ** max(attempts - 1, 0))
    jitter: float = (rng or random.Random()).uniform(0.8, 1.2)
    return min(MAX_DELAY_S, delay * jitter)
