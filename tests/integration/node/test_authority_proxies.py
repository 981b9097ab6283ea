"""``qdspace authority serve`` counting callers by network, and behind a reverse proxy.

Before: each address (an IPv6 caller's /64) had a budget of refused attempts and nothing
above it, so a caller holding an IPv6 /48 had 65,536 budgets; and the service took the
caller's address from uvicorn, which believed X-Forwarded-For from 127.0.0.1 (any local
caller could name any address, and have a fresh budget each time) and from no other
proxy (behind one, every caller shared the proxy's budget). Now an address's network (an
IPv4 /24, an IPv6 /48) has a budget too, and the header is read from the proxies the
operator names (``--trusted-proxy``, here through its environment variable) and from
nobody else; a malformed one from a trusted proxy is a 400 problem.

The service is a real ``authority serve`` process; callers are loopback addresses (all
of 127/8 is lo on Linux), the "proxy" one of them that sends the header itself. Nothing
is timed: the bounds are computed from the time the test took.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from qdspace.node.authority.attempts import (
    DEFAULT_BURST,
    DEFAULT_EVERY_S,
    DEFAULT_NETWORK_BURST,
    DEFAULT_NETWORK_EVERY_S,
)
from qdspace.node.authority.forwarded import TRUSTED_PROXIES_ENV

from .authority_service import Service, authority_service, client_from, foreign_code, problem

pytestmark = pytest.mark.integration

PREVIEW = "/v1/enrollment/preview"
#: the proxy in front of the service, in the networks it trusts (not uvicorn's 127.0.0.1)
PROXY = "127.0.0.9"
OTHER_PROXY = "127.0.0.10"
TRUSTED = "127.0.0.8/30 192.0.2.0/24"
#: a caller on the service's machine, not a trusted proxy
LOCAL = "127.0.0.2"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Service]:
    env = {TRUSTED_PROXIES_ENV: TRUSTED}
    with authority_service(tmp_path / "authority", "proxy-space", env=env) as served:
        yield served


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[Service]:
    with authority_service(tmp_path / "authority", "proxy-space") as served:
        yield served


def _as(client: httpx.Client, caller: str | list[str], code: str) -> httpx.Response:
    """A preview of ``code`` forwarded for ``caller`` (one X-Forwarded-For line each)."""
    lines = [caller] if isinstance(caller, str) else caller
    headers = [("X-Forwarded-For", line) for line in lines]
    return client.post(PREVIEW, json={"code": code}, headers=headers)


def _until_429(answers: Iterable[httpx.Response]) -> tuple[int, httpx.Response | None]:
    """The refusals worked (403) before the first 429, and that 429 (None: none came)."""
    worked = 0
    for answer in answers:
        if answer.status_code == 429:
            return worked, answer
        assert answer.status_code == 403, answer.text
        worked += 1
    return worked, None


def _spent(answers: Iterable[httpx.Response], since: float, every_s: float, says: str) -> None:
    """A spent budget (one that ran out at ``since`` or later): ``answers`` soon meet its
    429, which ``says`` so, after no more refusals worked than it got back since."""
    worked, over = _until_429(answers)
    assert over is not None, f"{worked} refusals worked, none answered 429"
    problem(over, 429, says)
    assert worked <= (time.monotonic() - since) / every_s + 1


def test_many_64s_of_one_48_are_stopped_by_the_48(proxied: Service, tmp_path: Path) -> None:
    """64 /64s hold 64 address budgets (1,920 refusals at once); their /48 holds 300."""
    bad = foreign_code(tmp_path / "foreign", "proxy-space")
    started = time.monotonic()
    with client_from(proxied, PROXY) as proxy:
        answers = (
            _as(proxy, f"2001:db8:7:{subnet:x}::1", bad)
            for subnet in range(64)
            for _ in range(DEFAULT_BURST)
        )
        worked, over = _until_429(answers)
        elapsed = time.monotonic() - started
        assert over is not None, f"{worked} refusals worked, none answered 429"
        problem(over, 429, "'s network 2001:db8:7::/48 (network budget: ")
        assert worked <= DEFAULT_NETWORK_BURST + elapsed / DEFAULT_NETWORK_EVERY_S + 1
        assert worked >= DEFAULT_NETWORK_BURST  # each /64 was worked until the /48 ran out
        # new /64s of that /48 are refused before any work; another /48 is not
        fresh = (_as(proxy, f"2001:db8:7:{subnet:x}::1", bad) for subnet in range(64, 9999))
        _spent(fresh, started, DEFAULT_NETWORK_EVERY_S, "network 2001:db8:7::/48 (network")
        problem(_as(proxy, "2001:db8:8::1", bad), 403, "")


def test_addresses_of_one_24_are_stopped_by_the_24(direct: Service, tmp_path: Path) -> None:
    """Callers connecting from 40 addresses of one /24 (127.0.1.x) share its budget."""
    bad = foreign_code(tmp_path / "foreign", "proxy-space")
    started = time.monotonic()

    def answers() -> Iterator[httpx.Response]:
        for host in range(1, 41):
            with client_from(direct, f"127.0.1.{host}") as caller:
                for _ in range(DEFAULT_BURST):
                    yield caller.post(PREVIEW, json={"code": bad})

    with closing(answers()) as sent:
        worked, over = _until_429(sent)
    elapsed = time.monotonic() - started
    assert over is not None, f"{worked} refusals worked, none answered 429"
    problem(over, 429, "'s network 127.0.1.0/24 (network budget: ")
    assert worked >= DEFAULT_NETWORK_BURST
    assert worked <= DEFAULT_NETWORK_BURST + elapsed / DEFAULT_NETWORK_EVERY_S + 1


def test_a_forged_header_gets_no_fresh_budget_without_trusted_proxies(
    direct: Service, tmp_path: Path
) -> None:
    """By default no peer is trusted, not even 127.0.0.1 (uvicorn's default trust): a
    caller naming a new address in each request is counted by its own."""
    bad = foreign_code(tmp_path / "foreign", "proxy-space")
    started = time.monotonic()
    with client_from(direct, "127.0.0.1") as spoofer:
        forged = (_as(spoofer, f"198.51.{i // 200}.{i % 200 + 1}", bad) for i in range(400))
        worked, over = _until_429(forged)
    elapsed = time.monotonic() - started
    assert over is not None, f"{worked} forged refusals worked, none answered 429"
    problem(over, 429, "too many refused attempts from 127.0.0.1 (address budget: ")
    assert worked <= DEFAULT_BURST + elapsed / DEFAULT_EVERY_S + 1


def test_a_forged_header_gets_no_fresh_budget_from_an_untrusted_peer(
    proxied: Service, tmp_path: Path
) -> None:
    bad = foreign_code(tmp_path / "foreign", "proxy-space")
    started = time.monotonic()
    with client_from(proxied, LOCAL) as spoofer:
        forged = (_as(spoofer, [f"198.51.100.{i % 250}", PROXY], bad) for i in range(400))
        worked, over = _until_429(forged)
    elapsed = time.monotonic() - started
    assert over is not None, f"{worked} forged refusals worked, none answered 429"
    problem(over, 429, f"too many refused attempts from {LOCAL} (address budget: ")
    assert worked <= DEFAULT_BURST + elapsed / DEFAULT_EVERY_S + 1
    # a malformed header from a peer that is not trusted is not read at all
    code = str(proxied.authority.create_enrollment(name="cellex", role="supplier"))
    with client_from(proxied, "127.0.0.3") as other:
        assert _as(other, "not an address", code).status_code == 200


def test_a_trusted_proxy_separates_its_callers(proxied: Service, tmp_path: Path) -> None:
    bad = foreign_code(tmp_path / "foreign", "proxy-space")
    code = str(proxied.authority.create_enrollment(name="cellex", role="supplier"))
    started = time.monotonic()
    with client_from(proxied, PROXY) as proxy:
        flood = (_as(proxy, "198.51.100.7", bad) for _ in range(DEFAULT_BURST + 200))
        worked, over = _until_429(flood)
        assert over is not None and worked >= DEFAULT_BURST, worked
        problem(over, 429, "too many refused attempts from 198.51.100.7 (address budget: ")
        # the caller prepends an address of its choice; the proxy appended its real one
        forged = (_as(proxy, "203.0.113.5, 198.51.100.7", bad) for _ in range(200))
        _spent(forged, started, DEFAULT_EVERY_S, "from 198.51.100.7 (address budget")
        # through a second trusted proxy (two header lines): still that caller
        chained = (_as(proxy, ["198.51.100.7", OTHER_PROXY], bad) for _ in range(200))
        _spent(chained, started, DEFAULT_EVERY_S, "from 198.51.100.7 (address budget")
        # other callers behind the same proxy have their own budgets, honest or not
        assert _as(proxy, "203.0.113.9", code).status_code == 200
        assert _as(proxy, "[2001:db8:9::1]:4711", code).status_code == 200
        problem(_as(proxy, "203.0.113.9", bad), 403, "")
        # the proxy's own requests (no header): its own address's budget
        problem(proxy.post(PREVIEW, json={"code": bad}), 403, "")


MALFORMED: list[str | list[str]] = [
    "not-an-address",
    "198.51.100.7,",
    "198.51.100.7,,127.0.0.10",
    "",
    "[2001:db8::1",
    "198.51.100.7:http",
    ["198.51.100.7", "junk"],
]


def test_a_malformed_header_from_a_trusted_proxy_is_400(proxied: Service) -> None:
    code = str(proxied.authority.create_enrollment(name="cellex", role="supplier"))
    with client_from(proxied, PROXY) as proxy:
        for header in MALFORMED:
            answer = _as(proxy, header, code)
            problem(answer, 400, f"X-Forwarded-For from trusted proxy {PROXY}: ")
            assert "is not an IP address" in answer.json()["detail"], header
        assert _as(proxy, "198.51.100.7", code).status_code == 200  # the code is unspent
