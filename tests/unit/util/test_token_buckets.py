"""`TokenBuckets`: one bucket per key, made full on its first take, keys apart."""

from __future__ import annotations

import pytest

from qdspace.util.token_bucket import SharedBuckets, TokenBuckets


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(rate=0.5, burst=2)
    assert [buckets.take("mallory", 10.0) for _ in range(3)] == [0.0, 0.0, 2.0]
    assert buckets.take("sunarc", 10.0) == 0.0  # another key, a full bucket of its own
    assert buckets.take("mallory", 11.0) == 1.0  # half a token back after a second
    assert buckets.take("mallory", 12.0) == 0.0


def test_shared_buckets_cut_the_rate_among_the_callers_of_the_window() -> None:
    """Alone, a caller has half (at least two shares); a second and a third caller each
    cut it further from the others' next take; one silent for the window is forgotten
    and its share goes back to the others. The forgotten key's bucket does not stay in
    memory."""
    shared = SharedBuckets(rate=6.0, burst=6, window=10.0)
    assert [shared.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert shared.take("a", 0.0) == pytest.approx(1 / 3)  # half: 3 a second, burst 3
    assert shared.take("b", 0.0) == 0.0 and shared.take("c", 0.0) == 0.0
    assert shared.shares == 3
    assert shared.take("a", 1.0) == 0.0  # a second at its old rate: 3 tokens (burst now 2)
    assert shared.take("a", 1.0) == 0.0
    assert shared.take("a", 1.0) == pytest.approx(1 / 2)  # its third: 2 a second
    assert shared.take("a", 20.0) == 0.0  # b and c silent for 19 s: forgotten
    assert shared.shares == 2 and set(shared._callers) == {"a"}
