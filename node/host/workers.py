"""The host's worker threads, shared by its tenants in turns: no tenant holds them all.

A host serves every tenant in one process, and their blocking work (a database read, a
large encode, a signature) runs in worker threads of two pools that every tenant
shares: asyncio's default executor, which every gRPC handler's ``asyncio.to_thread``
uses (and the tenants' contract jobs' and the host's own), and the worker
threads of anyio, in which Starlette runs the synchronous routes and
``run_in_threadpool`` calls of the tenants' HTTP apps (the operator API behind the
host's listener, each DSP and regulator listener). Each pool has a fixed number of
threads (asyncio's ``min(32, CPUs + 4)``, anyio's 40) and serves the work in the order
it came.

The tenants' quotas (`node.host.admission`) count calls, not threads, and a tenant's
allowance was larger than either pool: 32 calls and 32 streams of its members, 32
requests of its staff. One tenant whose calls each held a thread a while (a trace
question over a long genealogy, a large catalog, a slow disk) took every thread of a
pool, and every other tenant's call that needed one waited until those calls ended:
with the threads held 4 s, a neighbour's cheap trace hop took 4.5 s and its staff's
``GET /v1/node`` 3.9 s (`tests/integration/host/test_host_worker_shares.py`).

So the host replaces both pools' admission with `FairShares`, keyed by the tenant
whose work it is (`node.logs.MEMBER`: set for a tenant's servers, jobs and requests,
and read when the work is handed over, in the caller's context; the host's own work is
one more key). A tenant may run at most ``threads // max(2, n)`` pieces of work at once
(at least one), ``n`` being the tenants with work running or waiting: alone, half of the
pool, so a tenant that starts calling finds a thread free at once; with others, an
equal part. Work past its share waits in the tenant's own queue, in order, without a
thread; when a thread frees, the next tenant in turn that is under its share starts
its oldest work. A tenant that floods the pool waits behind its own work; one that
arrives when the others fill the pool waits at most until one piece of theirs ends
(running work is never interrupted). The threads left idle while a lone tenant is at
its half are the room kept for the others; ``worker_threads`` and
``http_worker_threads`` in ``host.json`` size the pools.

`TenantExecutor` is the asyncio side (a `ThreadPoolExecutor`, which asyncio requires of
a default executor, that starts only what the shares let start), and
`TenantThreadLimiter` the anyio side (the capacity limiter anyio's worker threads are
taken through, installed as the loop's default: Starlette names no limiter of its own).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar

import anyio

from qdspace.node.logs import MEMBER

logger = logging.getLogger("node.host")

T = TypeVar("T")
P = ParamSpec("P")
#: whose work it is: a tenant's name, or None for the host's own
Key = str | None


def default_threads() -> int:
    """asyncio's own size for its default executor."""
    return min(32, (os.cpu_count() or 1) + 4)


def share_of(threads: int, active: int) -> int:
    """The most work one tenant may run at once while ``active`` tenants have work."""
    return max(1, threads // max(2, active))


class FairShares(Generic[T]):
    """Work waiting per tenant, started in turn within each tenant's share of ``threads``
    (see the module). Plain bookkeeping: no thread, no clock; callers hold one lock.

    `add` and `done` return the work to start now, as (tenant, item) pairs."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.total = 0  # work running
        self._running: dict[Key, int] = {}
        #: waiting work per tenant; a tenant served moves to the end (its turn is over)
        self._waiting: dict[Key, deque[T]] = {}
        #: shares and the thread count no longer apply (the pool is shutting down)
        self.unbounded = False

    @property
    def share(self) -> int:
        return share_of(self.threads, len(self._active()))

    def running(self, key: Key) -> int:
        return self._running.get(key, 0)

    def waiting(self, key: Key) -> int:
        return len(self._waiting.get(key, ()))

    def add(self, key: Key, item: T) -> list[tuple[Key, T]]:
        self._waiting.setdefault(key, deque()).append(item)
        return self.take()

    def start_now(self, key: Key) -> bool:
        """Count one piece of ``key``'s work as running if it could start at once (none
        of its own waits, it is under its share, a thread is free)."""
        share = share_of(self.threads, len(self._active() | {key}))
        if key in self._waiting or self.running(key) >= share or self.total >= self.threads:
            return False
        self._count(key)
        return True

    def done(self, key: Key) -> list[tuple[Key, T]]:
        """One piece of ``key``'s work ended (or was given up after it started)."""
        left = self._running[key] - 1
        if left:
            self._running[key] = left
        else:
            del self._running[key]
        self.total -= 1
        return self.take()

    def withdraw(self, key: Key, item: T) -> list[tuple[Key, T]]:
        """Take back waiting work (its caller gave up); fewer tenants may mean larger
        shares, so what may start now is returned."""
        queue = self._waiting.get(key)
        if queue is not None and item in queue:
            queue.remove(item)
            if not queue:
                del self._waiting[key]
        return self.take()

    def take(self) -> list[tuple[Key, T]]:
        started: list[tuple[Key, T]] = []
        while self.unbounded or self.total < self.threads:
            for key in self._waiting:  # the first in turn that is under its share
                if self._startable(key):
                    break
            else:
                break
            queue = self._waiting.pop(key)
            started.append((key, queue.popleft()))
            if queue:
                self._waiting[key] = queue
            self._count(key)
        return started

    def waiting_items(self) -> list[T]:
        return [item for queue in self._waiting.values() for item in queue]

    def _active(self) -> set[Key]:
        return self._running.keys() | self._waiting.keys()

    def _startable(self, key: Key) -> bool:
        return self.unbounded or self._running.get(key, 0) < self.share

    def _count(self, key: Key) -> None:
        self._running[key] = self._running.get(key, 0) + 1
        self.total += 1


@dataclass(eq=False)
class _Work:
    call: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class TenantExecutor(ThreadPoolExecutor):
    """asyncio's default executor of a host: each tenant's work within its share (the
    module). Work waiting for its turn holds no thread; cancelled before its turn, it
    never runs."""

    def __init__(self, threads: int, key: Callable[[], Key] = MEMBER.get) -> None:
        super().__init__(max_workers=threads, thread_name_prefix="host-worker")
        self._key = key
        self.shares: FairShares[_Work] = FairShares(threads)
        self._lock = threading.Lock()  # the shares are counted from the loop and workers
        self._closing = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        work = _Work(functools.partial(fn, *args, **kwargs))
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            started = self.shares.add(self._key(), work)
        self._start(started)
        return work.future

    def _done(self, key: Key) -> list[tuple[Key, _Work]]:
        with self._lock:
            return self.shares.done(key)

    def _start(self, started: list[tuple[Key, _Work]]) -> None:
        while started:
            key, work = started.pop(0)
            if work.future.cancelled():  # its caller gave up while it waited: next turn
                started.extend(self._done(key))
                continue
            try:
                inner = super().submit(self._run, key, work)
            except RuntimeError:  # the pool is shut (the interpreter is exiting)
                work.future.cancel()
                started.extend(self._done(key))
                continue
            inner.add_done_callback(functools.partial(_dropped, work))

    def _run(self, key: Key, work: _Work) -> None:
        try:
            if work.future.set_running_or_notify_cancel():
                try:
                    result = work.call()
                except BaseException as exc:  # as ThreadPoolExecutor hands them on
                    work.future.set_exception(exc)
                else:
                    work.future.set_result(result)
        finally:
            self._start(self._done(key))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; start what waits (every tenant's at once, the shares no longer
        apply), or with ``cancel_futures`` cancel it; then as `ThreadPoolExecutor`."""
        with self._lock:
            self._closing = True
            if cancel_futures:
                for work in self.shares.waiting_items():
                    work.future.cancel()
            self.shares.unbounded = True
            started = self.shares.take()  # (cancelled work is counted off as it comes)
        self._start(started)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _dropped(work: _Work, inner: Future[None]) -> None:
    """A shutdown that cancels queued work cancelled this before a thread took it."""
    if inner.cancelled():
        work.future.cancel()


class TenantThreadLimiter(anyio.CapacityLimiter):
    """anyio's capacity limiter for a host's HTTP worker threads: a token is taken within
    the share of the tenant whose request it is (the module). One event loop, so no lock:
    every method runs on it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> TenantThreadLimiter:
        return object.__new__(cls)  # (anyio's picks its backend's class)

    def __init__(self, tokens: int, key: Callable[[], Key] = MEMBER.get) -> None:
        self._key = key
        self.shares: FairShares[asyncio.Future[None]] = FairShares(tokens)
        self._held: dict[object, Key] = {}  # borrower -> the tenant it holds a token of

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def total_tokens(self) -> float:
        return self.shares.threads

    @total_tokens.setter
    def total_tokens(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError("a host's HTTP worker threads are a whole number, at least 2")
        self.shares.threads = value
        self._grant(self.shares.take())

    @property
    def borrowed_tokens(self) -> int:
        return self.shares.total

    @property
    def available_tokens(self) -> float:
        return max(0, self.shares.threads - self.shares.total)

    def acquire_nowait(self) -> None:
        self.acquire_on_behalf_of_nowait(_task())

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        self._check_free(borrower)
        key = self._key()
        if not self.shares.start_now(key):
            raise anyio.WouldBlock
        self._held[borrower] = key

    async def acquire(self) -> None:
        await self.acquire_on_behalf_of(_task())

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        self._check_free(borrower)
        key = self._key()
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._grant(self.shares.add(key, ticket))
        try:
            await ticket
        except BaseException:
            if ticket.done() and not ticket.cancelled():  # its turn came as it gave up
                self._grant(self.shares.done(key))
            else:
                self._grant(self.shares.withdraw(key, ticket))
            raise
        self._held[borrower] = key

    def release(self) -> None:
        self.release_on_behalf_of(_task())

    def release_on_behalf_of(self, borrower: object) -> None:
        try:
            key = self._held.pop(borrower)
        except KeyError:
            raise RuntimeError("this borrower isn't holding any of this limiter's tokens") from None
        self._grant(self.shares.done(key))

    def statistics(self) -> anyio.CapacityLimiterStatistics:
        return anyio.CapacityLimiterStatistics(
            self.borrowed_tokens,
            self.total_tokens,
            tuple(self._held),
            len(self.shares.waiting_items()),
        )

    def _check_free(self, borrower: object) -> None:
        if borrower in self._held:
            raise RuntimeError("this borrower is already holding one of this limiter's tokens")

    def _grant(self, started: list[tuple[Key, asyncio.Future[None]]]) -> None:
        while started:
            key, ticket = started.pop(0)
            if ticket.done():  # cancelled while it waited: the turn passes on
                started.extend(self.shares.done(key))
            else:
                ticket.set_result(None)


def _task() -> object:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("a worker thread is taken from within a task")
    return task


def install_worker_shares(loop: asyncio.AbstractEventLoop, threads: int, http_threads: int) -> None:
    """Make the running loop's default executor and anyio's default thread limiter the
    tenants' (first thing in the host's loop: neither may have been used yet)."""
    loop.set_default_executor(TenantExecutor(threads))
    limiter = TenantThreadLimiter(http_threads)
    try:  # anyio keeps a loop's default limiter in a run variable of its asyncio backend
        from anyio._backends._asyncio import _default_thread_limiter

        _default_thread_limiter.set(limiter)  # type: ignore[arg-type]  # (the base class)
    except (ImportError, AttributeError):  # (a test pins it: `anyio` moved it)
        logger.error("HTTP worker threads not shared in turns: anyio's limiter was not found")
    logger.info(
        "worker threads: %d for handlers, %d for HTTP routes; a tenant holds at most half",
        threads,
        http_threads,
    )
