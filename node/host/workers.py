"""The host's worker threads, shared by its tenants in turns: idle threads are lent (all but
one), busy ones go to whoever holds the fewest.

A host serves every tenant in one process, and their blocking work (a database read, a
large encode, a signature) runs in worker threads of two pools that every tenant
shares: asyncio's default executor, which every gRPC handler's ``asyncio.to_thread``
uses (and the tenants' contract jobs' and the host's own), and the worker
threads of anyio, in which Starlette runs the synchronous routes and
``run_in_threadpool`` calls of the tenants' HTTP apps (the operator API behind the
host's listener, each DSP and regulator listener). Each pool has a fixed number of
threads (asyncio's ``min(32, CPUs + 4)``, anyio's 40; ``worker_threads`` and
``http_worker_threads`` in ``host.json``) and, left alone, serves the work in the order
it came.

The tenants' quotas (`node.host.admission`) count calls, not threads, and a tenant's
allowance is larger than either pool: 32 calls and 32 streams of its members, 32
requests of its staff. In arrival order, one tenant whose calls each held a thread a
while (a trace question over a long genealogy, a large catalog, a slow disk) took every
thread, and every other tenant's work queued behind *all* of its calls, not just the
running ones (`tests/integration/host/test_host_worker_shares.py`).

So the host replaces both pools' admission with `FairShares`, keyed by the tenant
whose work it is (`node.logs.MEMBER`: set for a tenant's servers, jobs and requests,
and read when the work is handed over, in the caller's context; the host's own work is
one more key). Its two rules:

- **Lent, but one.** Capacity nobody asks for is lent to whoever does: a tenant alone
  may use every thread *but one*, as many as it has work for. The one is kept for a
  neighbour: running work is never interrupted (a thread cannot be taken from a call
  midway), so a tenant that borrowed every thread would keep a neighbour arriving
  behind the first of its running jobs to end, for as long as that takes (a slow
  read, a large encode: seconds). With one kept, the neighbour starts at once.
- **Fewest first.** Work past the free threads waits in its tenant's own queue, in
  order, holding no thread. When a thread frees, the waiting tenant that *holds the
  fewest threads* starts its oldest work; among equals, the one served longest ago
  (round robin). So the running counts of tenants with queued work are levelled one
  thread at a time: each waiting tenant gets an equal part of the pool, or all it asks
  for if that is less (max-min fairness), and a borrower gives back what it borrowed as
  its work ends, since it is never the fewest while others wait.

The price of lending is therefore bounded, not zero: where two tenants or more hold
every thread between them, a third arriving waits for the *first* of the running jobs
to end (it then holds the fewest: none), never behind anyone's queue; a request that
needs a thread several times waits so at most at each step. (Before, a tenant could
hold at most half of a pool, or 1/n while n tenants had work: a tenant alone left half
of the host's threads idle.)

Cancelled work leaves at once. A caller that gives up (its client went away, its
deadline passed: asyncio cancels the task, which cancels the executor's future, and
anyio's cancel scope the task waiting on the limiter) takes its work out of its
tenant's queue: it never runs, and it no longer counts as waiting. Work whose turn
came just as it was cancelled gives its thread straight on to the next in turn, so no
slot is lost either way.

`TenantExecutor` is the asyncio side (a `ThreadPoolExecutor`, which asyncio requires of
a default executor, that starts only what `FairShares` lets start), and
`TenantThreadLimiter` the anyio side (the capacity limiter anyio's worker threads are
taken through). Starlette takes its threads through anyio's *default* limiter and
names none of its own, and anyio has no public way to replace that default (only
`anyio.to_thread.current_default_thread_limiter` to read it, and its ``total_tokens``
to resize it). `install_worker_shares` therefore sets the one private run variable
that holds it, checks through the public function that it took, and otherwise falls
back to anyio's own limiter sized from ``host.json``, in arrival order, and says so
(a test pins that it takes with the anyio in use).
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
import anyio.to_thread

from qdspace.node.logs import MEMBER

logger = logging.getLogger("node.host")

T = TypeVar("T")
P = ParamSpec("P")
#: whose work it is: a tenant's name, or None for the host's own
Key = str | None


def default_threads() -> int:
    """asyncio's own size for its default executor."""
    return min(32, (os.cpu_count() or 1) + 4)


class FairShares(Generic[T]):
    """Work waiting per tenant and the threads each holds, started by the module's two
    rules. Plain bookkeeping: no thread, no clock; callers hold one lock.

    `add` and `done` return the work to start now, as (tenant, item) pairs."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.total = 0  # work running
        self._running: dict[Key, int] = {}
        #: waiting work per tenant, in turn order: a tenant served moves to the end
        self._waiting: dict[Key, deque[T]] = {}
        #: the thread count no longer applies (the pool is shutting down)
        self.unbounded = False

    def running(self, key: Key) -> int:
        return self._running.get(key, 0)

    def waiting(self, key: Key) -> int:
        return len(self._waiting.get(key, ()))

    @property
    def tasks_waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def add(self, key: Key, item: T) -> list[tuple[Key, T]]:
        self._waiting.setdefault(key, deque()).append(item)
        return self.take()

    @property
    def most(self) -> int:
        """The most threads one tenant may hold: every one but one, kept for a neighbour
        (the module's first rule); of a pool of one thread, that one."""
        return max(1, self.threads - 1)

    def start_now(self, key: Key) -> bool:
        """Count one piece of ``key``'s work as running if a thread is free now for it.
        Work that waits while a thread is free is of tenants holding `most` (`take` runs
        after every change): ``key``, under it, holds fewer, and may go first."""
        if self.total >= self.threads or self.running(key) >= self.most:
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

    def withdraw(self, key: Key, item: T) -> bool:
        """Take back waiting work (its caller gave up); False if it is not waiting (it
        started, or was withdrawn before). Frees no thread, so nothing starts."""
        queue = self._waiting.get(key)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        if not queue:
            del self._waiting[key]
        return True

    def take(self) -> list[tuple[Key, T]]:
        """Start waiting work while threads are free: each time the oldest work of the
        waiting tenant holding the fewest, the first in turn among equals, while it holds
        fewer than `most`."""
        started: list[tuple[Key, T]] = []
        while self._waiting and (self.unbounded or self.total < self.threads):
            key = min(self._waiting, key=self.running)  # (min keeps the first of equals)
            if not self.unbounded and self.running(key) >= self.most:
                break  # the fewest holds all but one: the last is kept for a neighbour
            queue = self._waiting.pop(key)
            started.append((key, queue.popleft()))
            if queue:
                self._waiting[key] = queue  # its turn is over: to the end
            self._count(key)
        return started

    def waiting_items(self) -> list[T]:
        return [item for queue in self._waiting.values() for item in queue]

    def _count(self, key: Key) -> None:
        self._running[key] = self._running.get(key, 0) + 1
        self.total += 1


@dataclass(eq=False)
class _Work:
    call: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class TenantExecutor(ThreadPoolExecutor):
    """asyncio's default executor of a host: each tenant's work started by `FairShares`
    (the module). Work waiting for its turn holds no thread; cancelled before it runs,
    it leaves its tenant's queue at once and never runs."""

    def __init__(self, threads: int, key: Callable[[], Key] = MEMBER.get) -> None:
        super().__init__(max_workers=threads, thread_name_prefix="host-worker")
        self._key = key
        self.shares: FairShares[_Work] = FairShares(threads)
        #: the shares are counted from the loop and the workers. Never held while a
        #: future is cancelled or work is handed to a thread (both call back in here)
        self._lock = threading.Lock()
        self._closing = False
        #: whether the shutdown cancels what waits (else it runs it all)
        self._cancelling = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        key = self._key()
        work = _Work(functools.partial(fn, *args, **kwargs))
        work.future.add_done_callback(functools.partial(self._withdraw, key, work))
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            started = self.shares.add(key, work)
        self._start(started)
        return work.future

    def _withdraw(self, key: Key, work: _Work, future: Future[Any]) -> None:
        """A future cancelled while its work waits takes the work out of the queue (run
        by `Future.cancel`, in the caller's thread; if the work was taken already,
        `_start` or `_run` count it off). Whoever takes cancelled work out of the queue
        notifies its future, once, as a pool's worker would: until then
        `concurrent.futures.wait` does not see it done."""
        if future.cancelled():
            with self._lock:
                withdrawn = self.shares.withdraw(key, work)
            if withdrawn:
                future.set_running_or_notify_cancel()

    def _done(self, key: Key) -> list[tuple[Key, _Work]]:
        with self._lock:
            return self.shares.done(key)

    def _start(self, started: list[tuple[Key, _Work]]) -> None:
        pending = deque(started)
        while pending:
            key, work = pending.popleft()
            if work.future.cancelled():  # cancelled as its turn came: the thread passes on
                work.future.set_running_or_notify_cancel()
                pending.extend(self._done(key))
                continue
            try:
                inner = super().submit(self._run, key, work)
            except RuntimeError:  # the pool is shut
                if self._closing and not self._cancelling:
                    # a worker handed this on as `shutdown` shut the pool: run here, as
                    # shutdown runs what waits (cancelled, it failed its caller at random)
                    self._run(key, work)  # (which hands on what follows)
                    continue
                _cancel(work.future)  # (the interpreter is exiting)
                pending.extend(self._done(key))
                continue
            inner.add_done_callback(functools.partial(self._dropped, key, work))

    def _run(self, key: Key, work: _Work) -> None:
        try:
            if work.future.set_running_or_notify_cancel():  # False: cancelled meanwhile
                try:
                    result = work.call()
                except BaseException as exc:  # as ThreadPoolExecutor hands them on
                    work.future.set_exception(exc)
                else:
                    work.future.set_result(result)
        finally:
            self._start(self._done(key))

    def _dropped(self, key: Key, work: _Work, inner: Future[None]) -> None:
        """A shutdown that cancels queued work cancelled this before a thread took it:
        its caller learns so, and its thread is counted back. (Only after `shutdown`
        took every waiting piece, so nothing is handed on from here, which runs under
        the pool's own shutdown lock.)"""
        if inner.cancelled():
            _cancel(work.future)
            self._start(self._done(key))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; with ``cancel_futures`` cancel what waits, otherwise start it
        (every tenant's at once: the thread count no longer applies); then as
        `ThreadPoolExecutor`."""
        with self._lock:
            self._closing, self._cancelling = True, cancel_futures
            dropped = self.shares.waiting_items() if cancel_futures else []
        for work in dropped:
            work.future.cancel()  # (each leaves its queue: `_withdraw`)
        with self._lock:
            self.shares.unbounded = True
            started = self.shares.take()
        self._start(started)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _cancel(future: Future[Any]) -> None:
    """Cancel work taken from the queue that will not run, and notify its waiters."""
    if future.cancel():
        future.set_running_or_notify_cancel()


class TenantThreadLimiter(anyio.CapacityLimiter):
    """anyio's capacity limiter for a host's HTTP worker threads: a token is taken in
    the tenant's turn by `FairShares` (the module). One event loop, so no lock: every
    method runs on it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> TenantThreadLimiter:
        return object.__new__(cls)  # (anyio's picks its backend's class)

    def __init__(self, tokens: int, key: Callable[[], Key] = MEMBER.get) -> None:
        self._key = key
        self._held: dict[object, Key] = {}  # borrower -> the tenant it holds a token of
        self.shares: FairShares[asyncio.Future[None]] = FairShares(0)
        self.total_tokens = tokens

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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("a host's HTTP worker threads are a whole number, at least 1")
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
        except BaseException:  # cancelled: leave the queue, or pass on a token just granted
            if ticket.done() and not ticket.cancelled():
                self._grant(self.shares.done(key))
            else:
                self.shares.withdraw(key, ticket)
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
            self.borrowed_tokens, self.total_tokens, tuple(self._held), self.shares.tasks_waiting
        )

    def _check_free(self, borrower: object) -> None:
        if borrower in self._held:
            raise RuntimeError("this borrower is already holding one of this limiter's tokens")

    def _grant(self, started: list[tuple[Key, asyncio.Future[None]]]) -> None:
        pending = deque(started)
        while pending:
            key, ticket = pending.popleft()
            if ticket.done():  # its task was cancelled and has not run since: pass it on
                pending.extend(self.shares.done(key))
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
    shared = install_http_limiter(TenantThreadLimiter(http_threads))
    logger.info(
        "worker threads: %d for handlers, %d for HTTP routes%s; idle ones lent (all but "
        "one to one tenant), busy ones to the tenant holding the fewest",
        threads,
        http_threads,
        "" if shared else " (HTTP ones in arrival order)",
    )


def install_http_limiter(limiter: TenantThreadLimiter) -> bool:
    """Make ``limiter`` anyio's default thread limiter in the running loop; True if it
    took. anyio has no public setter (the module): the private run variable is set, and
    the public getter checks it. Otherwise anyio's own limiter is sized as ``limiter``
    and the HTTP threads are served in arrival order, which is logged as an error."""
    try:  # the only private anyio name used; `test_host_workers` pins that it is there
        from anyio._backends._asyncio import _default_thread_limiter

        _default_thread_limiter.set(limiter)  # type: ignore[arg-type]  # (the base class)
    except (ImportError, AttributeError):
        pass
    current = anyio.to_thread.current_default_thread_limiter()
    if current is limiter:
        return True
    current.total_tokens = limiter.total_tokens
    logger.error(
        "HTTP worker threads not shared in turns: this anyio keeps its default thread "
        "limiter elsewhere (%d threads, in arrival order)",
        limiter.total_tokens,
    )
    return False
