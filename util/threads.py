"""Long blocking work on a thread of its own, not the loop's shared worker threads.

``asyncio.to_thread`` hands work to the loop's default executor, a pool of a few threads
shared by everything the process serves; on a managed host each tenant takes them within
its share (`node.host.workers`). Work that runs for seconds or minutes (a federated
round's training) held one of them that long, and on a host its tenant's other calls
waited behind it. `on_own_thread` runs such work on a fresh daemon thread and awaits its
result without blocking the loop; cancelling the await leaves the thread to finish (a
thread cannot be stopped), its result dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def on_own_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new thread (with the caller's context variables, as
    ``asyncio.to_thread`` passes them); its result or exception."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # the caller gave up
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller, as to_thread does
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(
        target=work, name=f"own-{getattr(fn, '__name__', 'work')}", daemon=True
    ).start()
    return await done
