"""The authority service's budget of refused attempts per client address
(`node.authority.attempts`), on a clock the test drives: refusals cost, successes do not;
attempts in flight hold their token; a table bounded under many addresses that forgets
only full budgets; IPv6 counted by /64; a flood reported once then summed up, and log
lines of all addresses within one budget. (The served service answering 429 with
Retry-After: tests/integration/node/test_authority_flood.py.)"""

from __future__ import annotations

import threading

import pytest

from qdspace.node.authority.attempts import (
    UNKNOWN_CLIENT,
    AttemptRates,
    LogBudget,
    client_key,
)
from qdspace.node.authority.service import TooManyAttempts
from qdspace.node.faults import http_status


def _refuse(rates: AttemptRates, client: str, now: float) -> bool:
    """One attempt that the service refuses (its token kept); whether it was admitted."""
    return rates.admit(client, now).admitted


def test_refusals_cost_a_token_successes_give_it_back() -> None:
    rates = AttemptRates(burst=3, every_s=0.5)  # (times exact in binary)
    for _ in range(10):  # an honest caller: admitted and spared, never runs out
        assert rates.admit("10.0.0.1", 100.0).admitted
        rates.spare("10.0.0.1", 100.0)
    assert [_refuse(rates, "10.0.0.9", 100.0) for _ in range(3)] == [True] * 3
    over = rates.admit("10.0.0.9", 100.0)
    assert not over.admitted and over.wait_s == 0.5  # a token every half second
    assert rates.admit("10.0.0.9", 100.25).wait_s == 0.25  # a refusal takes nothing
    assert _refuse(rates, "10.0.0.9", 100.5)
    assert not rates.admit("10.0.0.9", 100.5).admitted
    assert rates.admit("10.0.0.1", 100.5).admitted  # another address: its own budget
    later = [_refuse(rates, "10.0.0.9", 1000.0) for _ in range(4)]
    assert later == [True, True, True, False]  # never more than the burst saved up


def test_attempts_in_flight_hold_their_tokens() -> None:
    """Twenty attempts at once, none finished yet: only the burst gets in (a flood of
    parallel requests cannot pass the gate before its refusals are counted)."""
    rates = AttemptRates(burst=5, every_s=60.0)
    admitted = [rates.admit("10.0.0.9", 0.0).admitted for _ in range(20)]
    assert admitted.count(True) == 5


def test_exact_under_threads() -> None:
    rates = AttemptRates(burst=200, every_s=1e9)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            ok = rates.admit("10.0.0.9", 1.0).admitted
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 200


def test_many_addresses_do_not_grow_the_table() -> None:
    rates = AttemptRates(burst=2, every_s=1.0, max_clients=100)
    for i in range(100_000):
        rates.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", float(i) * 1e-6)
    assert len(rates) == 100


def test_a_full_budget_is_forgotten_and_a_refused_one_kept() -> None:
    rates = AttemptRates(burst=2, every_s=1.0)
    rates.admit("10.0.0.1", 0.0)
    rates.spare("10.0.0.1", 0.0)  # honest: full again at once
    rates.admit("10.0.0.9", 0.0)  # refused: one token short until 1.0
    rates.admit("10.0.0.5", 0.5)
    assert len(rates) == 2  # 10.0.0.1 was full: forgotten
    rates.admit("10.0.0.7", 3.0)
    assert len(rates) == 1  # 10.0.0.9 and .5 full again by 3.0


def test_an_ipv6_caller_is_counted_by_its_64() -> None:
    """One subscriber holds a /64: each of its 2^64 addresses a budget of its own would
    be no budget at all."""
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4 on a dual-stack socket
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key(None) == client_key("") == UNKNOWN_CLIENT
    rates = AttemptRates(burst=1, every_s=60.0)
    assert rates.admit(client_key("2001:db8::1"), 0.0).admitted
    assert not rates.admit(client_key("2001:db8::2"), 0.0).admitted


def test_a_flood_is_reported_once_then_summed_up() -> None:
    rates = AttemptRates(burst=1, every_s=100.0, report_every_s=10.0)
    assert _refuse(rates, "10.0.0.9", 0.0)
    first = rates.admit("10.0.0.9", 0.0)
    assert first.report and first.refused == 1
    quiet = [rates.admit("10.0.0.9", t / 10) for t in range(1, 100)]  # 0.1 .. 9.9 s
    assert not any(v.report for v in quiet)
    summary = rates.admit("10.0.0.9", 10.0)
    assert summary.report and summary.refused == 100  # the 99 quiet ones and this one


def test_log_lines_of_all_addresses_share_one_budget() -> None:
    budget = LogBudget(burst=3, every_s=1.0)
    assert [budget.line(0.0) for _ in range(3)] == [0, 0, 0]
    assert [budget.line(0.0) for _ in range(50)] == [None] * 50
    assert budget.line(1.0) == 50  # the next line says how many were held back
    assert budget.line(1.0) is None


@pytest.mark.parametrize(("burst", "every_s"), [(0, 1.0), (True, 1.0), (1, 0.0), (1, -1)])
def test_nonsense_limits_are_refused(burst: int, every_s: float) -> None:
    with pytest.raises(ValueError, match=r"refusal burst|seconds between"):
        AttemptRates(burst=burst, every_s=every_s)


def test_too_many_attempts_is_a_429() -> None:
    assert http_status(TooManyAttempts("over", 3)) == 429
