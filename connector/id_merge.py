"""The rows of a scope made of several index searches, in id order, at the cost of what
it returns: an order's process readings and those of each batch in its genealogy.

Why: `paging.read_pages` reads a scope one statement a page, ``id > cursor AND scope
ORDER BY id LIMIT n``. For process data along a genealogy the scope is ``order_id = ?
OR batch_id IN (...)``, which no index serves in id order, so each page walked the
measurements by id until it had n matches: a pull cost the table from its cursor to the
order's last reading however few were the order's (2M readings, an order of 40k: 0.74 s,
bench/genealogy_read.py). Handing that OR to the indexes instead makes every page gather
and sort all the matches left, which is quadratic in the order (400k of 2M: 17 s).

Here each search (``order_id = ?``, ``batch_id = ?`` for each batch) is a stream of ids
read in id order from its own index (``(order_id, id)``, ``(batch_id, id)``) a chunk at
a time, and the streams are merged with a heap; a row two searches find (a reading of
the order in one of its batches) comes out once. A page costs its rows, a heap step
each, and one index seek per stream per chunk; the rows themselves are then read by id.

A read takes the table's highest id when it starts and reads nothing above it, so a
stream that came back short is finished for good and the pages are one point in time's
rows (a row stored during the read goes to the next pull; a view read this way is
pulled in full each time, `paging.incremental_refusal`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, bindparam, func, select

#: ids one index seek of a stream reads at most
CHUNK_IDS = 1000


@dataclass(frozen=True)
class MergedScope:
    """A scope read as the merge of its terms' id streams: each term an equality that an
    index on (that column, id) serves in id order; a row matching any term is in it."""

    terms: tuple[ColumnElement[bool], ...]


class IdMerge:
    """The ids of ``table``'s rows in ``scope`` after cursor ``after``, page by page
    (`next_ids`), each page read on the connection it is given."""

    def __init__(
        self, table: Table, scope: MergedScope, after: int, chunk: int = CHUNK_IDS
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self._max_id = select(func.max(table.c.id))
        self._searches = [
            select(table.c.id)
            .where(term, table.c.id > bindparam("after"), table.c.id <= bindparam("upto"))
            .order_by(table.c.id)
            .limit(chunk)
            for term in scope.terms
        ]
        self._chunk = chunk
        self._upto: int | None = None
        self._buffers: list[list[int]] = [[] for _ in scope.terms]
        self._at = [0] * len(scope.terms)  # the next id of each buffer
        self._read_to = [after] * len(scope.terms)
        self._heap: list[tuple[int, int]] = []  # (next id, stream) of every stream with one
        self._given = after

    def next_ids(self, connection: Connection, size: int) -> list[int]:
        """Up to ``size`` ids in id order after those given before; fewer only at the end."""
        if self._upto is None:
            self._upto = int(connection.execute(self._max_id).scalar() or 0)
            for k in range(len(self._searches)):
                self._refill(connection, k)
        ids: list[int] = []
        heap = self._heap
        while len(ids) < size and heap:
            _, k = heapq.heappop(heap)
            buffer, at = self._buffers[k], self._at[k]
            # the stream's run of ids below every other stream's next one goes at once
            # (a batch's readings are mostly one stretch of ids); at least its first
            end = len(buffer) if not heap else bisect_left(buffer, heap[0][0], at)
            end = max(at + 1, min(end, at + size - len(ids)))
            start = at + 1 if buffer[at] <= self._given else at  # the same row, found twice
            ids += buffer[start:end]
            if ids:
                self._given = ids[-1]
            self._at[k] = end
            if end < len(buffer):
                heapq.heappush(heap, (buffer[end], k))
            elif len(buffer) == self._chunk:  # a short chunk was the stream's last
                self._refill(connection, k)
        return ids

    def _refill(self, connection: Connection, k: int) -> None:
        values: dict[str, Any] = {"after": self._read_to[k], "upto": self._upto}
        found = list(connection.execute(self._searches[k], values).scalars().all())
        self._buffers[k], self._at[k] = found, 0
        if found:
            self._read_to[k] = found[-1]
            heapq.heappush(self._heap, (found[0], k))
