"""`TokenBuckets`: one bucket per key, made full on its first take, keys apart."""

from __future__ import annotations

from qdspace.util.token_bucket import TokenBuckets


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(rate=0.5, burst=2)
    assert [buckets.take("mallory", 10.0) for _ in range(3)] == [0.0, 0.0, 2.0]
    assert buckets.take("sunarc", 10.0) == 0.0  # another key, a full bucket of its own
    assert buckets.take("mallory", 11.0) == 1.0  # half a token back after a second
    assert buckets.take("mallory", 12.0) == 0.0
