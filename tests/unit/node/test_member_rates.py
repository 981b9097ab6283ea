"""A member's request rate (`node.rpc.member_rates`, `CallLimiter.pace`), on a clock the
test drives: the burst, then the rate; members apart; a table that forgets only buckets
that are full again (so forgetting changes no answer) and never holds more than its cap;
a flood of refusals reported once, then summed up; exact counts under threads."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import grpc
import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.errors import ConfigError, LimitExceeded
from qdspace.node.faults import http_status
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.limits import CallCaps, CallLimiter, RateExceeded
from qdspace.node.rpc.member_rates import MemberRates
from qdspace.util.token_bucket import TokenBucket


def test_a_member_gets_its_burst_then_its_rate() -> None:
    rates = MemberRates(rate=4.0, burst=3)  # (times exact in binary)
    assert [rates.take("mallory", 100.0).admitted for _ in range(3)] == [True] * 3
    refused = rates.take("mallory", 100.0)
    assert not refused.admitted and refused.wait_s == 0.25  # a token every 1/4 s
    assert rates.take("mallory", 100.125).wait_s == 0.125  # a refusal takes nothing
    assert rates.take("mallory", 100.25).admitted
    assert not rates.take("mallory", 100.25).admitted
    assert rates.take("sunarc", 100.25).admitted  # another member: its own full bucket
    later = [rates.take("mallory", 1000.0).admitted for _ in range(4)]
    assert later == [True, True, True, False]  # never more than the burst saved up


def test_forgetting_full_buckets_changes_no_answer() -> None:
    """Against buckets that are never forgotten, on a random schedule of five members
    with quiet spells: every answer the same, and the table holds only the members
    heard from within ``burst / rate`` seconds."""
    rng = random.Random(20260524)
    rates = MemberRates(rate=2.0, burst=4)  # full again 2 s after the last request
    kept: dict[str, TokenBucket] = {}
    now = 0.0
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.1, 0.5, 1.0, 3.0])
        member = rng.choice(["a", "b", "c", "d", "e"])
        bucket = kept.setdefault(member, TokenBucket(2.0, 4, now))
        assert rates.take(member, now).wait_s == pytest.approx(bucket.take(now), abs=1e-9)
        assert len(rates) <= 5
    rates.take("a", now + 2.0)
    assert len(rates) == 1  # the others were full again: forgotten


def test_the_table_never_holds_more_than_its_cap() -> None:
    rates = MemberRates(rate=1.0, burst=1, max_members=2)
    assert rates.take("a", 0.0).admitted and rates.take("b", 0.0).admitted
    assert not rates.take("a", 0.0).admitted  # a: the most recently seen now
    assert rates.take("c", 0.0).admitted  # b (least recently seen) is dropped for c
    assert len(rates) == 2
    assert not rates.take("a", 0.0).admitted  # a was kept, empty as it was
    assert rates.take("b", 0.0).admitted  # b starts again full (dropped early: the cap)


def test_a_flood_of_refusals_is_reported_once_then_summed_up() -> None:
    rates = MemberRates(rate=0.001, burst=1, report_every_s=10.0)
    assert rates.take("mallory", 0.0).admitted
    first = rates.take("mallory", 0.0)
    assert (first.report, first.refused) == (True, 1)
    quiet = [rates.take("mallory", t / 10) for t in range(1, 100)]  # 99 in 9.9 s
    assert not any(v.report for v in quiet)
    summed = rates.take("mallory", 10.0)
    assert (summed.report, summed.refused) == (True, 100)  # those 99 and this one
    other = rates.take("sunarc", 10.0), rates.take("sunarc", 10.0)
    assert other[0].admitted and (other[1].report, other[1].refused) == (True, 1)


def test_threads_racing_for_one_bucket_get_exactly_its_burst() -> None:
    rates = MemberRates(rate=0.001, burst=500)
    admitted: list[int] = []

    def flood() -> None:
        admitted.append(sum(rates.take("mallory", 5.0).admitted for _ in range(200)))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 500


@pytest.mark.parametrize(
    ("rate", "burst", "words"),
    [
        (0.0, 1, "rate must be a number above 0"),
        (float("nan"), 1, "rate must be a number above 0"),
        (1.0, 0, "burst must be a whole number of at least 1"),
    ],
)
def test_nonsense_limits_are_refused(rate: float, burst: int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        MemberRates(rate, burst)


def test_pace_refuses_naming_the_settings_and_when_to_retry() -> None:
    now = [50.0]
    limiter = CallLimiter(CallCaps(per_peer_rate=0.25, per_peer_burst=2), clock=lambda: now[0])
    limiter.pace("m-1", "mallory")
    limiter.pace("m-1", "mallory")
    with pytest.raises(RateExceeded) as refused:
        limiter.pace("m-1", "mallory")
    exc = refused.value
    assert str(exc) == (
        "member mallory is over its request rate on this node (rpc_rate_per_peer 0.25 a "
        "second, rpc_burst_per_peer 2); retry in 4 s"
    )
    assert exc.retry_after_s == 4 and exc.report and isinstance(exc, LimitExceeded)
    assert status_code(exc) is grpc.StatusCode.RESOURCE_EXHAUSTED and http_status(exc) == 429
    limiter.pace("m-2", "sunarc")  # another member is served
    now[0] = 53.5
    with pytest.raises(RateExceeded, match="retry in 1 s"):  # 0.5 s left: at least 1
        limiter.pace("m-1", "mallory")
    now[0] = 54.0
    limiter.pace("m-1", "mallory")


def test_the_settings_default_to_the_limits_and_refuse_nonsense(tmp_path: Path) -> None:
    member = {"name": "cellex", "role": "supplier", "member_id": "m-1"}
    (tmp_path / "node.json").write_text(json.dumps(member))
    settings = NodeSettings.load(tmp_path)
    caps = CallCaps()
    assert (settings.rpc_rate_per_peer, settings.rpc_burst_per_peer) == (
        caps.per_peer_rate,
        caps.per_peer_burst,
    )
    for field, value, words in (
        ("rpc_rate_per_peer", 0, "greater than or equal to 0.01"),
        ("rpc_rate_per_peer", "NaN", "finite number"),
        ("rpc_burst_per_peer", 0, "greater than or equal to 1"),
    ):
        (tmp_path / "node.json").write_text(json.dumps({**member, field: value}))
        with pytest.raises(ConfigError, match=f"{field}: .*{words}"):
            NodeSettings.load(tmp_path)


def test_the_node_builds_its_limiter_with_its_rate_settings(tmp_path: Path) -> None:
    from qdspace.node.serving import call_caps

    member = {"name": "cellex", "role": "supplier", "member_id": "m-1"}
    (tmp_path / "node.json").write_text(
        json.dumps({**member, "rpc_rate_per_peer": 5.0, "rpc_burst_per_peer": 7})
    )
    caps = call_caps(NodeSettings.load(tmp_path))
    assert (caps.per_peer_rate, caps.per_peer_burst) == (5.0, 7)
