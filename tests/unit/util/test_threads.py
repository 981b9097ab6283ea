"""Long work on a thread of its own leaves the loop's shared worker threads free."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from qdspace.util.threads import on_own_thread

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_long_work_holds_none_of_the_shared_worker_threads() -> None:
    """With one shared worker thread, a quick call handed to it is answered while the
    long work runs (with `asyncio.to_thread` for both, it waited for the long one)."""
    release = threading.Event()

    def long_work() -> str:
        release.wait(10)
        return WHO.get()

    async def main() -> tuple[str, float]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        WHO.set("calmco")
        started = time.monotonic()
        running = asyncio.create_task(on_own_thread(long_work))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 5)
        quick = time.monotonic() - started
        release.set()
        return await running, quick

    who, quick = asyncio.run(main())
    assert who == "calmco"  # the caller's context went with it
    assert quick < 5


def test_an_error_reaches_the_caller() -> None:
    def fails() -> None:
        raise ValueError("no data")

    with pytest.raises(ValueError, match="no data"):
        asyncio.run(on_own_thread(fails))
