"""API keys and their limits: who is asking, and whether they may submit now.

`API_KEYS` is `name:secret` pairs, comma-separated (or `API_KEYS_FILE`, one pair a line, `#`
comments); a request names its key with `Authorization: Bearer <secret>`. Secrets are
compared in constant time against every key (so the time taken says nothing about which
key came close) and never logged: a key is known by its name. Each key has a token bucket
(`RATE_LIMIT` submits per second, a burst of twice that) and a cap on jobs waiting
(`MAX_QUEUED_PER_KEY`); beyond either, a 429 says when to come back.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

__all__ = [
    "ApiKey",
    "KeyListError",
    "Keyring",
    "RateLimiter",
    "Verdict",
    "parse_keys",
    "read_keys_file",
]


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    secret_sha256: bytes  # only the digest is kept: equal lengths for constant-time compares


class KeyListError(ValueError):
    """A key list that cannot be read; the message says which entry."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_keys(entries: Iterable[str]) -> list[ApiKey]:
    """`name:secret` entries as keys; names are `[A-Za-z0-9_.-]{1,64}`, secrets at least 16
    characters, both unique."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, entry in enumerate(entries, start=1):
        name, colon, secret = entry.strip().partition(":")
        if not colon or not name:
            raise KeyListError(f"key {number} is not name:secret")
        if len(name) > 64 or not all(c.isalnum() or c in "_.-" for c in name):
            raise KeyListError(f"key {number}: a name is 1-64 letters, digits, _ . or -")
        if len(secret) < 16:
            raise KeyListError(f"key {name!r}: a secret needs at least 16 characters")
        digest = _digest(secret)
        if name in names or digest in digests:
            raise KeyListError(f"key {name!r}: names and secrets must be unique")
        names.add(name)
        digests.add(digest)
        keys.append(ApiKey(name=name, secret_sha256=digest))
    return keys


def read_keys_file(path: Path) -> list[str]:
    """The `name:secret` entries of a keys file: one a line, blank lines and `#` comments
    left out."""
    lines = path.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Keyring:
    """The configured keys; `identify` turns an Authorization header into a key name."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the key a `Bearer <secret>` header carries; None if none matches.

        Every key is compared, each in constant time, whatever matches first.
        """
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        digest = _digest(secret.strip())
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.secret_sha256):
                found = key.name
        return found


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a submit may go ahead, and the `RateLimit` figures to answer with."""

    allowed: bool
    limit: int  # the burst
    remaining: int
    reset_s: int  # until the bucket is full again
    retry_after_s: int  # 0 when allowed


class RateLimiter:
    """A token bucket per key: `rate` tokens a second, up to `burst`; one per submit."""

    def __init__(
        self, rate: float, *, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit is a positive number of submits per second")
        self.rate = rate
        self.burst = burst or max(1, math.ceil(2 * rate))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> Verdict:
        """Spend one token of `key`'s bucket if there is one."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        missing = 0.0 if allowed else 1.0 - tokens
        return Verdict(
            allowed=allowed,
            limit=self.burst,
            remaining=int(tokens),
            reset_s=math.ceil((self.burst - tokens) / self.rate),
            retry_after_s=math.ceil(missing / self.rate) if not allowed else 0,
        )
