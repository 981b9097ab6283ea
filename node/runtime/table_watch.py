"""Wake live streams when new rows are committed, instead of polling the database.

A live subscription used to query the database from the event loop every 10 ms, so
N subscribers meant N queries per 10 ms blocking everything else the node serves.
`TableWatch` hooks the node's own engine: a statement that inserts into the watched
table marks its connection, and that connection's commit bumps a generation counter
and wakes the waiting streams (from whatever thread committed). Rows written by
another process (an inspection line writing into the same SQLite file) are not seen
by these hooks; streams still read once per ``FALLBACK_POLL_S``, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from sqlalchemy import Engine, event

#: How long a stream waits for a wake-up before it looks at the table anyway.
FALLBACK_POLL_S = 1.0


class TableWatch:
    """A generation counter of commits that inserted into one table, with async waiting."""

    def __init__(self, engine: Engine, table: str) -> None:
        self._needle = f"INSERT INTO {table}".lower()
        self._flag = f"qdspace.table_watch.{table}"
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.generation = 0
        event.listen(engine, "after_cursor_execute", self._executed)
        event.listen(engine, "commit", self._committed)

    def _executed(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip()[: len(self._needle) + 8].lower().startswith(self._needle):
            conn.info[self._flag] = True

    def _committed(self, conn: Any) -> None:
        if conn.info.pop(self._flag, False):
            self.notify()

    def notify(self) -> None:
        """New rows are visible: wake every waiting stream."""
        with self._lock:
            self.generation += 1
            waiters = list(self._waiters)
        for loop, woken in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(woken.set)

    async def wait(self, seen: int, timeout: float = FALLBACK_POLL_S) -> int:
        """Return once the generation differs from `seen` or `timeout` passed; the generation."""
        woken = asyncio.Event()
        entry = (asyncio.get_running_loop(), woken)
        with self._lock:
            if self.generation != seen:
                return self.generation
            self._waiters.add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout)
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return self.generation
