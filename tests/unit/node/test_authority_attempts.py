"""The authority service's budget of refused attempts per client address
(`node.authority.attempts`), on a clock the test drives: refusals cost, successes do not;
attempts in flight hold their token; a table bounded under many addresses that forgets
only full budgets; IPv6 counted by /64; a flood reported once then summed up, and log
lines of all addresses within one budget. Each address's network (/24, /48) has a budget
too, in a table of its own that no flood of addresses evicts. (The served service
answering 429 with Retry-After: tests/integration/node/test_authority_flood.py; behind
proxies and by network: test_authority_proxies.py.)"""

from __future__ import annotations

import threading

import pytest

from qdspace.node.authority.attempts import (
    UNKNOWN_CLIENT,
    Admission,
    AttemptRates,
    Budget,
    LogBudget,
    client_key,
    network_of,
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


def test_an_address_is_counted_in_its_network_too() -> None:
    """An IPv4 address in its /24, an IPv6 /64 in its /48; no network for no address."""
    assert network_of(client_key("192.0.2.7")) == "192.0.2.0/24"
    assert network_of(client_key("2001:db8:1:2::1")) == "2001:db8:1::/48"
    assert network_of(client_key("::ffff:192.0.2.7")) == "192.0.2.0/24"
    assert network_of(UNKNOWN_CLIENT) is None
    assert network_of("some-socket-path") is None


def _spend(rates: AttemptRates, client: str, now: float = 0.0) -> list[Admission]:
    """Attempts of ``client`` the service refuses, until one is over a budget."""
    spent = []
    while (admission := rates.admit(client, now)).admitted:
        spent.append(admission)
    return [*spent, admission]


def test_many_64s_of_one_48_share_its_budget() -> None:
    rates = AttemptRates(burst=3, every_s=1.0)  # a network: 30 at once, one every 0.1 s
    assert rates.network_budget == Budget("network", 30, 0.1)
    worked = 0
    for subnet in range(100):  # 100 /64s: 300 refusals by their own budgets
        spent = _spend(rates, client_key(f"2001:db8:1:{subnet:x}::1"))
        worked += len(spent) - 1
        if spent[-1].network is not None:
            break
    assert worked == 30 and subnet == 9  # ten /64s' worth, then the /48 is spent
    over = spent[-1]
    assert over.network == "2001:db8:1::/48" and over.budget == rates.network_budget
    assert over.wait_s == 0.1 and over.report and over.refused == 1
    assert rates.admit(client_key("2001:db8:2::1"), 0.0).admitted  # another /48: its own


def test_an_address_over_its_own_budget_says_so_and_spends_no_network_token() -> None:
    rates = AttemptRates(burst=2, every_s=1.0, network_burst=3, network_every_s=100.0)
    over = _spend(rates, "192.0.2.7")[-1]
    assert over.network is None and over.budget == rates.address_budget
    for _ in range(50):  # its 429s give the network's token back: a 429 spends nothing
        assert rates.admit("192.0.2.7", 0.0).network is None
    assert rates.admit("192.0.2.8", 0.0).admitted  # the /24's third token is still there
    assert rates.admit("192.0.2.9", 0.0).network == "192.0.2.0/24"


def test_a_success_gives_both_tokens_back() -> None:
    rates = AttemptRates(burst=1, every_s=100.0, network_burst=1, network_every_s=100.0)
    for _ in range(10):
        assert rates.admit("192.0.2.7", 0.0).admitted
        rates.spare("192.0.2.7", 0.0)
    assert rates.admit("192.0.2.8", 0.0).admitted  # the /24's one token was given back


def test_a_flood_of_addresses_of_a_spent_network_holds_no_memory() -> None:
    """Once its /48 is spent, new /64s are refused before the address table: they add no
    budgets and push out nobody's (another caller's spent budget stays spent)."""
    rates = AttemptRates(burst=2, every_s=1e6, max_clients=100, max_networks=10)
    assert not _spend(rates, "192.0.2.7")[-1].admitted  # a victim... or a spent attacker
    for subnet in range(20_000):  # /64s of one /48, one refusal each
        rates.admit(client_key(f"2001:db8:1:{subnet:x}::1"), 1.0)
    assert len(rates) <= 1 + 20 and rates.networks == 2  # 20: the /48's burst of /64s
    assert rates.admit("192.0.2.7", 2.0).network is None  # still over its own budget


def test_a_flood_of_addresses_cannot_evict_a_spent_network() -> None:
    """The tables are apart: however many addresses (here 20,000 over a table of 100),
    a network's budget is only pushed out by other networks."""
    rates = AttemptRates(
        burst=2, every_s=1e6, network_burst=2_500, max_clients=100, max_networks=10
    )
    for subnet in range(1_250):  # /64s of one /48: two refusals each spend the /48
        for _ in range(2):
            assert rates.admit(client_key(f"2001:db8:1:{subnet:x}::1"), 0.0).admitted
    assert rates.admit(client_key("2001:db8:1:ffff::1"), 0.0).network == "2001:db8:1::/48"
    for i in range(20_000):  # /64s of 9 other /48s, each refused once (all admitted)
        assert rates.admit(client_key(f"2001:db8:{2 + i % 9:x}:{i:x}::1"), 1.0).admitted
    assert len(rates) == 100 and rates.networks == 10
    assert rates.admit(client_key("2001:db8:1:abcd::1"), 2.0).network == "2001:db8:1::/48"


def test_many_networks_do_not_grow_their_table() -> None:
    rates = AttemptRates(burst=2, every_s=1.0, max_clients=100, max_networks=50)
    for i in range(10_000):
        rates.admit(f"10.{i >> 8 & 255}.{i & 255}.1", float(i) * 1e-6)
    assert len(rates) == 100 and rates.networks == 50
