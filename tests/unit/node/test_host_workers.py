"""A host's worker threads taken in turns (`node.host.workers`): the bookkeeping by hand,
then the asyncio executor and the anyio limiter with real threads whose work is held on
an event, the tenant named by `node.logs.MEMBER` as the host sets it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from qdspace.node.host.config import HostSettings
from qdspace.node.host.workers import (
    FairShares,
    TenantExecutor,
    TenantThreadLimiter,
    install_worker_shares,
    share_of,
)
from qdspace.node.logs import MEMBER

WAIT_S = 10.0


@contextmanager
def as_tenant(name: str | None) -> Iterator[None]:
    token = MEMBER.set(name)
    try:
        yield
    finally:
        MEMBER.reset(token)


# -- the bookkeeping ---------------------------------------------------------------


def test_a_tenant_alone_gets_half_and_an_equal_part_among_others() -> None:
    assert [share_of(8, n) for n in (0, 1, 2, 3, 4, 9)] == [4, 4, 4, 2, 2, 1]
    assert share_of(2, 1) == 1 and share_of(3, 1) == 1


def test_work_past_a_share_waits_and_a_newcomer_starts_at_once() -> None:
    shares: FairShares[str] = FairShares(4)
    started = [shares.add("a", f"a{i}") for i in range(5)]
    assert [len(s) for s in started] == [1, 1, 0, 0, 0]  # half of 4
    assert (shares.running("a"), shares.waiting("a"), shares.total) == (2, 3, 2)
    assert shares.add("b", "b0") == [("b", "b0")]  # the free half
    assert shares.add("b", "b1") == [("b", "b1")]
    assert shares.add("c", "c0") == []  # the pool is full: c waits for a thread
    # a's work ends: three tenants now, a share of 1; a is over it, so c's turn
    assert shares.done("a") == [("c", "c0")]
    assert shares.done("a") == [("a", "a2")]  # a thread is free, and a is under its share
    assert shares.done("b") == []  # a is at its share: the free thread is kept for others
    assert shares.add("d", "d0") == [("d", "d0")]


def test_tenants_under_their_share_take_turns() -> None:
    shares: FairShares[str] = FairShares(4)
    assert shares.add("c", "c0") == [("c", "c0")]
    assert shares.add("a", "a0") == [("a", "a0")]
    assert shares.add("b", "b0") == [("b", "b0")]
    for item in ("a1", "a2"):  # three tenants: a share of 1 each
        assert shares.add("a", item) == []
    assert shares.add("b", "b1") == []
    # c's work ends: two tenants, a share of 2; a waited first, then it is b's turn
    assert shares.done("c") == [("a", "a1"), ("b", "b1")]
    assert shares.waiting("a") == 1


def test_waiting_work_can_be_withdrawn_and_shares_can_be_lifted() -> None:
    shares: FairShares[str] = FairShares(4)
    for i in range(4):
        shares.add("a", f"a{i}")
    assert shares.withdraw("a", "a3") == [] and shares.waiting("a") == 1
    assert shares.withdraw("a", "a3") == []  # (gone already: nothing happens)
    assert shares.start_now("b") and not shares.start_now("a")
    shares.unbounded = True
    assert shares.take() == [("a", "a2")]


# -- the asyncio executor ----------------------------------------------------------


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, "not within the wait"
        time.sleep(0.01)


def _held(gate: threading.Event, running: list[str], name: str) -> str:
    running.append(name)
    assert gate.wait(WAIT_S)
    return name


def test_the_executor_runs_a_tenant_within_its_share_and_its_neighbour_at_once() -> None:
    pool = TenantExecutor(4)
    gate, running = threading.Event(), []
    try:
        with as_tenant("busy"):
            held = [pool.submit(_held, gate, running, f"busy{i}") for i in range(10)]
        with as_tenant("calm"):
            assert pool.submit(lambda: "calm").result(WAIT_S) == "calm"
        _eventually(lambda: len(running) == 2)
        assert pool.shares.waiting("busy") == 8  # half of 4 run; the rest hold no thread
        with as_tenant("busy"):
            cancelled = pool.submit(_held, gate, running, "never")
        assert cancelled.cancel()
        gate.set()
        assert [f.result(WAIT_S) for f in held] == [f"busy{i}" for i in range(10)]
        assert "never" not in running and pool.shares.total == 0
    finally:
        gate.set()
        pool.shutdown()


def test_the_executor_hands_on_errors_and_runs_what_waits_at_shutdown() -> None:
    pool = TenantExecutor(2)
    gate, running = threading.Event(), []

    def fail() -> None:
        raise KeyError("x")

    with as_tenant("busy"):
        first = pool.submit(_held, gate, running, "first")
        waiting = pool.submit(lambda: "then")
        failed = pool.submit(fail)
    threading.Timer(0.2, gate.set).start()
    pool.shutdown(wait=True)
    assert (first.result(0), waiting.result(0)) == ("first", "then")
    assert isinstance(failed.exception(0), KeyError)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_shutdown_that_cancels_queued_work_leaves_no_future_pending() -> None:
    pool = TenantExecutor(2)
    gate, running = threading.Event(), []
    with as_tenant("busy"):
        futures = [pool.submit(_held, gate, running, f"busy{i}") for i in range(5)]
    _eventually(lambda: len(running) == 1)
    threading.Timer(0.2, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert futures[0].result(0) == "busy0"
    assert all(f.done() for f in futures) and all(f.cancelled() for f in futures[1:])


def test_the_pool_sizes_are_checked_in_host_json() -> None:
    assert HostSettings().worker_threads is None  # asyncio's own number
    assert HostSettings().http_worker_threads == 40
    for bad in ({"worker_threads": 1}, {"http_worker_threads": 0}, {"worker_threads": 10**6}):
        with pytest.raises(ValidationError):
            HostSettings.model_validate(bad)


def test_asyncio_hands_a_tenant_s_to_thread_work_over_in_its_context() -> None:
    """asyncio submits from the calling task, so the executor sees whose work it is."""
    seen: list[str | None] = []

    def key() -> str | None:
        seen.append(MEMBER.get())
        return MEMBER.get()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(TenantExecutor(4, key))
        with as_tenant("acme"):
            assert await asyncio.to_thread(MEMBER.get) == "acme"
        assert await asyncio.to_thread(lambda: 1) == 1

    asyncio.run(main())
    assert seen == ["acme", None]


# -- the anyio limiter -------------------------------------------------------------


def _in_threads(tenant: str, n: int, call: Callable[[], Any]) -> list[asyncio.Task[Any]]:
    with as_tenant(tenant):
        return [asyncio.ensure_future(run_in_threadpool(call)) for _ in range(n)]


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the wait")


def test_http_threads_are_taken_within_a_tenant_s_share() -> None:
    async def main() -> None:
        install_worker_shares(asyncio.get_running_loop(), 4, 6)
        limiter = anyio.to_thread.current_default_thread_limiter()
        assert isinstance(limiter, TenantThreadLimiter)  # anyio's run variable is ours
        gate, running = threading.Event(), []
        busy = _in_threads("busy", 8, lambda: _held(gate, running, "busy"))
        await _until(lambda: len(running) == 3)
        await asyncio.sleep(0.05)
        assert len(running) == 3  # half of 6
        calm = _in_threads("calm", 1, lambda: "calm")
        assert await asyncio.wait_for(calm[0], WAIT_S) == "calm"
        busy[-1].cancel()  # a request that gave up while it waited takes no thread
        await asyncio.gather(busy[-1], return_exceptions=True)
        gate.set()
        assert await asyncio.gather(*busy[:-1]) == ["busy"] * 7
        assert (limiter.borrowed_tokens, limiter.statistics().tasks_waiting) == (0, 0)
        assert len(running) == 7

    asyncio.run(main())


def test_a_request_cancelled_as_its_turn_comes_gives_the_thread_on() -> None:
    async def main() -> None:
        limiter = TenantThreadLimiter(2)
        async with limiter:  # one tenant's share of 2: it holds it
            waiter = asyncio.ensure_future(limiter.acquire())
            await asyncio.sleep(0)
            assert limiter.statistics().tasks_waiting == 1
        waiter.cancel()  # its turn came with the release; it is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        assert limiter.borrowed_tokens == 0
        limiter.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            await asyncio.ensure_future(_nowait(limiter))
        limiter.release()
        assert limiter.available_tokens == 2

    asyncio.run(main())


async def _nowait(limiter: TenantThreadLimiter) -> None:
    limiter.acquire_nowait()  # another task of the same tenant: over its share of 1
