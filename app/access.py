"""Who is asking: API keys on the job routes, each job's owner, and each key's submit rate.

With `API_KEYS` (or `API_KEYS_FILE`) set, every `/jobs` and `/probe` request names its key
(`Authorization: Bearer <secret>`, else 401 with `WWW-Authenticate`); a job belongs to the
key that made it, and any other key is told it does not exist (404, as for an unknown id).
`/health`, `/metrics`, `/docs` and the web page stay open. Without keys, everyone is the
same anonymous caller, as in the seed service.
"""

from __future__ import annotations

from quart import g

from app.errors import RateLimited, Unauthorized
from app.keys import Keyring, RateLimiter
from app.settings import Settings, api_keys
from app.store import JobRecord

__all__ = ["Access", "caller", "guarded"]

#: The name the RateLimit headers give the submit quota.
POLICY = "submits"


class Access:
    """The keys, and the rate limit of each (none when RATE_LIMIT is unset)."""

    def __init__(self, settings: Settings) -> None:
        self.keyring = Keyring(api_keys(settings))
        self.limiter = None if settings.rate_limit is None else RateLimiter(settings.rate_limit)
        self.max_queued = settings.max_queued_per_key

    def identify(self, authorization: str | None) -> str | None:
        """The key's name (None without keys); 401 for a missing or unknown secret."""
        if not self.keyring.enabled:
            return None
        name = self.keyring.identify(authorization)
        if name is None:
            if authorization:
                raise Unauthorized("the API key is not valid (send Authorization: Bearer <secret>)")
            raise Unauthorized("this server needs an API key: send Authorization: Bearer <secret>")
        return name

    def take_submit(self, owner: str | None) -> dict[str, str]:
        """Spend one submit of `owner`'s rate: the RateLimit headers to answer with, or a
        429 saying when the next submit is allowed."""
        if self.limiter is None:
            return {}
        verdict = self.limiter.take(owner or "")
        window = max(1, round(verdict.limit / self.limiter.rate))
        headers = {
            "RateLimit-Policy": f'"{POLICY}";q={verdict.limit};w={window}',
            "RateLimit": f'"{POLICY}";r={verdict.remaining};t={verdict.reset_s}',
        }
        if not verdict.allowed:
            who = "this key" if owner is not None else "this server"
            raise RateLimited(
                f"too many submits: {who} allows {self.limiter.rate:g} a second (a burst of"
                f" {verdict.limit}, RATE_LIMIT); retry in {verdict.retry_after_s} s",
                retry_after_s=verdict.retry_after_s,
                limits=headers,
            )
        return headers

    def may_see(self, owner: str | None, record: JobRecord) -> bool:
        """Whether the caller `owner` may know `record` exists."""
        return not self.keyring.enabled or record.owner == owner


def guarded(path: str) -> bool:
    """Whether a request to `path` must name its key (the job routes and the probe)."""
    return path == "/probe" or path == "/jobs" or path.startswith("/jobs/")


def caller() -> str | None:
    """The API key's name of the current request (None without keys)."""
    owner: str | None = g.get("owner")
    return owner
