"""API keys: parsing, identifying a request's key, and the per-key token bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.keys import KeyListError, Keyring, RateLimiter, parse_keys, read_keys_file

A_SECRET = "a-secret-of-enough-length"
B_SECRET = "b-secret-of-enough-length"


def test_keys_are_read_from_pairs_and_from_a_file(tmp_path: Path) -> None:
    keys = parse_keys([f"alice:{A_SECRET}", f" bob:{B_SECRET} "])
    assert [key.name for key in keys] == ["alice", "bob"]
    assert all(A_SECRET.encode() not in key.secret_sha256 for key in keys)  # digests only
    path = tmp_path / "keys"
    path.write_text(f"# who may submit\nalice:{A_SECRET}\n\n  # bob left\ncarol:{B_SECRET}\n")
    assert [key.name for key in parse_keys(read_keys_file(path))] == ["alice", "carol"]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        (["alice"], "not name:secret"),
        ([":x" * 10], "not name:secret"),
        (["al ice:" + A_SECRET], "letters, digits"),
        (["alice:short"], "at least 16"),
        ([f"alice:{A_SECRET}", f"alice:{B_SECRET}"], "unique"),
        ([f"alice:{A_SECRET}", f"bob:{A_SECRET}"], "unique"),
    ],
)
def test_bad_key_lists_are_refused_naming_the_entry(entries: list[str], words: str) -> None:
    with pytest.raises(KeyListError, match=words):
        parse_keys(entries)


def test_a_request_is_identified_by_its_bearer_secret() -> None:
    ring = Keyring(parse_keys([f"alice:{A_SECRET}", f"bob:{B_SECRET}"]))
    assert ring.enabled
    assert ring.identify(f"Bearer {A_SECRET}") == "alice"
    assert ring.identify(f"bearer {B_SECRET}") == "bob"
    for header in (None, "", "Bearer", f"Basic {A_SECRET}", f"Bearer {A_SECRET}x", A_SECRET):
        assert ring.identify(header) is None, header
    assert not Keyring([]).enabled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_over_the_rate_gets_a_correct_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, clock=clock)  # 2 a second, a burst of 4
    verdicts = [limiter.take("alice") for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, True, False]
    assert [v.remaining for v in verdicts[:4]] == [3, 2, 1, 0]
    refused = verdicts[-1]
    assert (refused.limit, refused.retry_after_s, refused.reset_s) == (4, 1, 2)
    assert limiter.take("bob").allowed  # buckets are per key
    clock.now += 0.49
    assert not limiter.take("alice").allowed  # 0.98 of a token: not yet
    clock.now += refused.retry_after_s
    assert limiter.take("alice").allowed  # Retry-After was long enough
    clock.now += 60
    assert limiter.take("alice").remaining == 3  # refilled to the burst, not beyond
