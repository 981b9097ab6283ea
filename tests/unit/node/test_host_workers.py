"""A host's worker threads taken in turns (`node.host.workers`): the bookkeeping by hand,
then the asyncio executor and the anyio limiter with real threads whose work is held on
an event of its own (released one by one), the tenant named by `node.logs.MEMBER` as
the host sets it. Nothing here waits for time to pass: each step waits for the event
that makes the next one true.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from qdspace.node.host.config import HostSettings
from qdspace.node.host.workers import (
    FairShares,
    TenantExecutor,
    TenantThreadLimiter,
    install_worker_shares,
)
from qdspace.node.logs import MEMBER

#: how long a step may take before the test fails (never reached when it passes)
WAIT_S = 10.0


@contextmanager
def as_tenant(name: str | None) -> Iterator[None]:
    token = MEMBER.set(name)
    try:
        yield
    finally:
        MEMBER.reset(token)


class Jobs:
    """Work for worker threads: `held` work holds its thread until `release`d, `quick`
    work returns at once; both note the order they started in."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._gates: dict[str, threading.Event] = {}
        self._changed = threading.Condition()
        self._waiter = ThreadPoolExecutor(1)  # (waits for threads without the pool tested)

    def held(self, name: str) -> Callable[[], str]:
        gate = self._gates[name] = threading.Event()

        def run() -> str:
            self._note(name)
            assert gate.wait(WAIT_S), f"{name} was never released"
            return name

        return run

    def quick(self, name: str) -> Callable[[], str]:
        def run() -> str:
            self._note(name)
            return name

        return run

    def release(self, name: str) -> None:
        self._gates[name].set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    def started(self, count: int) -> None:
        """Wait until ``count`` pieces of work have started."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.order) >= count, WAIT_S), (
                f"{len(self.order)} started, not {count}: {self.order}"
            )

    async def started_async(self, count: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._waiter, self.started, count)

    def close(self) -> None:
        self.release_all()
        self._waiter.shutdown()

    def _note(self, name: str) -> None:
        with self._changed:
            self.order.append(name)
            self._changed.notify_all()


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    made = Jobs()
    try:
        yield made
    finally:
        made.close()


# -- the bookkeeping ---------------------------------------------------------------


def test_a_lone_tenant_may_use_every_thread_but_one() -> None:
    shares: FairShares[str] = FairShares(4)
    started = [shares.add("a", f"a{i}") for i in range(6)]
    assert [len(s) for s in started] == [1, 1, 1, 0, 0, 0]  # idle threads lent, but one
    assert (shares.running("a"), shares.waiting("a"), shares.total) == (3, 3, 3)
    assert shares.add("b", "b0") == [("b", "b0")]  # the one kept: a neighbour starts at once
    assert shares.add("c", "c0") == []  # two tenants hold every thread: c waits
    assert shares.done("a") == [("c", "c0")]  # for the first to end, before a's own queue
    assert shares.done("b") == [("a", "a3")]  # a holds 2 (fewer than 3) and alone waits
    assert shares.done("c") == []  # a holds all but one and alone waits: one stays free
    assert not shares.start_now("a") and shares.start_now("b")  # for a neighbour


def test_a_pool_of_one_thread_lends_it() -> None:
    shares: FairShares[str] = FairShares(1)
    assert shares.add("a", "a0") == [("a", "a0")] and shares.add("a", "a1") == []
    assert shares.done("a") == [("a", "a1")]


def test_a_freed_thread_goes_to_the_waiting_tenant_holding_the_fewest() -> None:
    shares: FairShares[str] = FairShares(4)
    for i in range(8):  # a borrows 3 threads (all but one); 5 more of its pieces wait
        shares.add("a", f"a{i}")
    assert shares.add("b", "b0") == [("b", "b0")]  # the fourth
    for item in ("b1", "b2", "b3"):
        assert shares.add("b", item) == []
    assert shares.add("c", "c0") == []
    # a's work ends piece by piece: c holds none, so it goes first; then a and b hold one
    # each and a is first in turn; then both hold one again and b's turn has come
    freed = [shares.done("a") for _ in range(3)]
    assert freed == [[("c", "c0")], [("a", "a3")], [("b", "b1")]]
    assert [shares.running(k) for k in "abc"] == [1, 2, 1] and shares.total == 4
    # levelled: from now on, whoever holds the fewest of the tenants waiting goes next
    assert shares.done("c") == [("a", "a4")]
    assert shares.done("b") == [("b", "b2")]  # b holds 1 now, a 2


def test_waiting_work_can_be_withdrawn_and_the_count_lifted() -> None:
    shares: FairShares[str] = FairShares(3)
    for i in range(4):  # a0 and a1 run (all but one); a2 and a3 wait
        shares.add("a", f"a{i}")
    assert shares.withdraw("a", "a3") and shares.waiting("a") == 1
    assert not shares.withdraw("a", "a3")  # (gone already)
    assert not shares.withdraw("a", "a0")  # (running: not waiting)
    assert shares.start_now("b")  # the thread kept, while a's work waits
    assert not shares.start_now("c")  # no thread free
    assert shares.done("a") == [("a", "a2")]
    assert shares.tasks_waiting == 0 and not shares.start_now("c")  # a2 took it
    shares.done("a")
    assert shares.start_now("c") and shares.total == 3
    shares.add("b", "b1")
    shares.unbounded = True
    assert shares.take() == [("b", "b1")]


# -- the asyncio executor ----------------------------------------------------------


def test_the_executor_lends_idle_threads_and_a_newcomer_goes_next(jobs: Jobs) -> None:
    pool = TenantExecutor(4)
    try:
        with as_tenant("busy"):
            busy = [pool.submit(jobs.held(f"busy{i}")) for i in range(6)]
        jobs.started(3)  # alone, it uses every thread but one
        assert (pool.shares.running("busy"), pool.shares.waiting("busy")) == (3, 3)
        with as_tenant("calm"):
            assert pool.submit(jobs.quick("calm")).result(WAIT_S) == "calm"  # at once
            other = pool.submit(jobs.held("other"))  # the kept thread, held now
        jobs.started(5)
        with as_tenant("late"):
            late = pool.submit(jobs.quick("late"))
        assert pool.shares.waiting("late") == 1  # no thread free
        jobs.release("busy0")  # the first to end: its thread goes to late, not to busy3
        assert late.result(WAIT_S) == "late"
        assert sorted(jobs.order[:3]) == [f"busy{i}" for i in range(3)]
        assert jobs.order[3:6] == ["calm", "other", "late"]
        jobs.release_all()
        assert [f.result(WAIT_S) for f in busy] == [f"busy{i}" for i in range(6)]
        assert other.result(WAIT_S) == "other"
    finally:
        jobs.release_all()
        pool.shutdown()
    assert pool.shares.total == 0


def test_a_cancelled_call_leaves_the_queue_and_never_runs(jobs: Jobs) -> None:
    """A handler whose caller went away (asyncio cancels its task) takes its waiting
    work out of the queue at once; it never runs, and its thread is not lost."""

    async def main() -> None:
        pool = TenantExecutor(2)
        asyncio.get_running_loop().set_default_executor(pool)
        held = []
        for tenant in ("b0", "b1"):  # two tenants, a thread each: the pool is full
            with as_tenant(tenant):
                held.append(asyncio.ensure_future(asyncio.to_thread(jobs.held(tenant))))
        await jobs.started_async(2)
        with as_tenant("gone"):
            gone = asyncio.ensure_future(asyncio.to_thread(jobs.quick("gone")))
        await asyncio.sleep(0)  # (one turn of the loop: the task hands its work over)
        assert pool.shares.waiting("gone") == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert pool.shares.waiting("gone") == 0 and pool.shares.tasks_waiting == 0
        with as_tenant("next"):
            after = asyncio.ensure_future(asyncio.to_thread(jobs.quick("next")))
        jobs.release("b0")  # the freed thread goes to the next caller, not the gone one
        assert await asyncio.wait_for(after, WAIT_S) == "next"
        jobs.release_all()
        assert await asyncio.gather(*held) == ["b0", "b1"]
        assert "gone" not in jobs.order

    asyncio.run(main())  # (shuts the executor down, every thread joined)
    assert jobs.order.count("gone") == 0


def test_a_cancelled_future_is_done_at_once_for_whoever_waits_on_it(jobs: Jobs) -> None:
    """`concurrent.futures.wait` sees cancelled work done only once it is notified (a
    pool's worker does that as it takes the work): withdrawn work is notified then."""
    pool = TenantExecutor(2)
    try:
        held = []
        for tenant in ("b0", "b1"):
            with as_tenant(tenant):
                held.append(pool.submit(jobs.held(tenant)))
        with as_tenant("gone"):
            gone = pool.submit(jobs.quick("gone"))
        assert gone.cancel()
        assert futures_wait([gone], 0).done == {gone}
        assert pool.shares.tasks_waiting == 0
        jobs.release_all()
        assert [f.result(WAIT_S) for f in held] == ["b0", "b1"]
    finally:
        jobs.release_all()
        pool.shutdown()
    assert "gone" not in jobs.order and pool.shares.total == 0


def test_the_executor_hands_on_errors_and_runs_what_waits_at_shutdown(jobs: Jobs) -> None:
    pool = TenantExecutor(3)  # (busy alone runs two)

    def fail() -> None:
        raise KeyError("x")

    with as_tenant("busy"):
        first = pool.submit(jobs.held("first"))
        second = pool.submit(jobs.held("second"))
        waiting = pool.submit(lambda: "then")
        failed = pool.submit(fail)
    jobs.started(2)
    assert pool.shares.waiting("busy") == 2
    releasing = threading.Thread(target=jobs.release_all)  # while shutdown() waits
    releasing.start()
    pool.shutdown(wait=True)
    releasing.join()
    assert (first.result(0), second.result(0), waiting.result(0)) == ("first", "second", "then")
    assert isinstance(failed.exception(0), KeyError)
    assert pool.shares.total == 0
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_work_a_worker_hands_on_as_the_pool_shuts_is_run_not_cancelled(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker finishing takes the next waiting work (its tenant's turn) just as
    ``shutdown`` shuts the pool: handing it to the shut pool failed, and the work was
    cancelled though shutdown runs what waits (CI saw the race once)."""
    pool = TenantExecutor(3)  # (busy alone runs two)
    done = pool._done
    shut = threading.Event()

    def late(key: Any) -> Any:  # the worker stalls between its turn and the hand-on
        started = done(key)
        if started and threading.current_thread().name.startswith("host-worker"):
            shut.wait(30)
            while not pool._shutdown:  # (ThreadPoolExecutor's flag, set under its lock)
                threading.Event().wait(0.001)
        return started

    monkeypatch.setattr(pool, "_done", late)
    with as_tenant("busy"):
        first = pool.submit(jobs.held("first"))
        second = pool.submit(jobs.held("second"))
        third = pool.submit(lambda: "third")
    jobs.started(2)
    jobs.release("first")  # its worker takes "third" and stalls before handing it on
    releasing = threading.Thread(target=lambda: (shut.set(), jobs.release_all()))
    releasing.start()
    pool.shutdown(wait=True)
    releasing.join()
    assert (first.result(0), second.result(0), third.result(0)) == ("first", "second", "third")


def test_a_shutdown_that_cancels_queued_work_leaves_no_future_pending(jobs: Jobs) -> None:
    pool = TenantExecutor(3)  # (busy alone runs two)
    with as_tenant("busy"):
        futures = [pool.submit(jobs.held(f"busy{i}")) for i in range(5)]
    jobs.started(2)

    def release_once_cancelled() -> None:  # (while shutdown() waits for the running two)
        futures_wait(futures[2:], WAIT_S)
        jobs.release_all()

    releasing = threading.Thread(target=release_once_cancelled)
    releasing.start()
    pool.shutdown(wait=True, cancel_futures=True)
    releasing.join()
    assert [f.result(0) for f in futures[:2]] == ["busy0", "busy1"]
    assert all(f.cancelled() for f in futures[2:])
    assert (pool.shares.total, pool.shares.tasks_waiting) == (0, 0)
    assert sorted(jobs.order) == ["busy0", "busy1"]


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


def _in_thread(tenant: str, call: Callable[[], Any]) -> asyncio.Task[Any]:
    """A Starlette synchronous route's work, as the tenant's request hands it over."""
    with as_tenant(tenant):
        return asyncio.ensure_future(run_in_threadpool(call))


async def _until(check: Callable[[], bool]) -> None:
    """Let the loop run until ``check`` holds (tasks reaching the limiter)."""
    for _ in range(int(WAIT_S / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the wait")


def test_http_threads_are_lent_and_a_newcomer_goes_next(jobs: Jobs) -> None:
    async def main() -> None:
        install_worker_shares(asyncio.get_running_loop(), 4, 6)
        limiter = anyio.to_thread.current_default_thread_limiter()
        assert isinstance(limiter, TenantThreadLimiter)  # (pins anyio's private hook)
        busy = [_in_thread("busy", jobs.held(f"busy{i}")) for i in range(8)]
        await jobs.started_async(5)  # alone, it uses every thread but one
        await _until(lambda: limiter.statistics().tasks_waiting == 3)
        assert await asyncio.wait_for(_in_thread("calm", jobs.quick("calm")), WAIT_S) == "calm"
        other = _in_thread("other", jobs.held("other"))  # the kept thread, held now
        await jobs.started_async(7)
        late = _in_thread("late", jobs.quick("late"))
        gone = _in_thread("gone", jobs.quick("gone"))
        await _until(lambda: limiter.statistics().tasks_waiting == 5)
        gone.cancel()  # a request that gave up while it waited: out of the queue
        await asyncio.gather(gone, return_exceptions=True)
        assert limiter.statistics().tasks_waiting == 4 and limiter.shares.waiting("gone") == 0
        jobs.release("busy0")  # its thread goes to late, not to busy5 that waited longer
        assert await asyncio.wait_for(late, WAIT_S) == "late"
        assert jobs.order[5:8] == ["calm", "other", "late"]
        jobs.release_all()
        assert await asyncio.gather(*busy) == [f"busy{i}" for i in range(8)]
        assert await other == "other"
        assert (limiter.borrowed_tokens, limiter.statistics().tasks_waiting) == (0, 0)
        assert "gone" not in jobs.order

    asyncio.run(main())


def test_a_request_cancelled_as_its_turn_comes_gives_the_thread_on() -> None:
    async def main() -> None:
        limiter = TenantThreadLimiter(1)
        async with limiter:
            waiter = asyncio.ensure_future(limiter.acquire())
            await asyncio.sleep(0)  # (one turn: the waiter queues)
            assert limiter.statistics().tasks_waiting == 1
        waiter.cancel()  # its turn came with the release; it is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        assert limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0
        limiter.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            await asyncio.ensure_future(_nowait(limiter))
        limiter.release()
        assert limiter.available_tokens == 1

    asyncio.run(main())


async def _nowait(limiter: TenantThreadLimiter) -> None:
    limiter.acquire_nowait()  # another task: no token is free


def test_a_limiter_of_no_threads_is_refused() -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="whole number, at least 1"):
            TenantThreadLimiter(bad)  # type: ignore[arg-type]


def test_without_anyio_s_hook_the_http_threads_are_still_sized(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An anyio that keeps its default limiter elsewhere (the private run variable
    `install_http_limiter` sets no longer holds it): its own limiter is sized from
    host.json through the public API, and the host says the threads are not shared."""
    import anyio._backends._asyncio as backend

    class Moved:  # the old variable, no longer the one anyio reads
        def __init__(self, real: Any) -> None:
            self.real = real

        def get(self, *default: Any) -> Any:
            return self.real.get(*default)

        def set(self, value: Any) -> Any:
            return None if isinstance(value, TenantThreadLimiter) else self.real.set(value)

    monkeypatch.setattr(backend, "_default_thread_limiter", Moved(backend._default_thread_limiter))

    async def main() -> None:
        install_worker_shares(asyncio.get_running_loop(), 4, 7)
        limiter = anyio.to_thread.current_default_thread_limiter()
        assert not isinstance(limiter, TenantThreadLimiter) and limiter.total_tokens == 7

    with caplog.at_level("ERROR", logger="node.host"):
        asyncio.run(main())
    assert "not shared in turns" in caplog.text
