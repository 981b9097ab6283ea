"""Reading an OPC UA node's history: a page at a time, bounded however the server answers.

The backfill after an outage, and the context nodes' past values, come from the server's
history. A server decides how much it sends and whether it says there is more, so each
bound here is one a server once got around:

- history is read ``HISTORY_PAGE`` values a request, and each page is handed on (stored)
  before the next is read;
- at most ``limit`` values (the backfill's ``MAX_BACKFILL``) are read through a node's
  history, and at most ``MAX_HISTORY_READS`` requests: a server whose continuation points
  never ended kept the connector reading, and holding, history for ever, and it stored no
  live reading meanwhile;
- a server that sends a full page and no continuation point (asyncua's server cuts at the
  values asked for) is paged on by time, from the newest time of the page;
- an answer of another kind than data values (events) is an `OpcuaServerError` for that
  node (it raised AttributeError and ended the connector).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

from qdspace.connector.linein.opcua_values import OpcuaServerError, Reading, no_value, screened

log = logging.getLogger("qdspace.connector.linein.opcua")

#: values asked for per history read (a server may send fewer, and a continuation point)
HISTORY_PAGE = 1000
#: values of one node read at most per read through its history (the rest is not backfilled)
MAX_BACKFILL = 100_000
#: requests per read through a node's history at most (a server that sends empty pages)
MAX_HISTORY_READS = 1000


def is_fresh(reading: Reading, after: datetime | None, seen: set[datetime], again: bool) -> bool:
    """Whether a reading of a backfill is to be stored: taken after ``after`` (the newest
    stored) and not read before; one without a time only on the first read (refused)."""
    taken = reading.taken
    if taken is None:
        return not again
    return (after is None or taken > after) and taken not in seen


class HistoryRead:
    """One read through a node's history from ``start`` to ``end``, a page at a time
    (`pages`), ``limit`` values at most; ``capped`` once it stopped there."""

    def __init__(
        self, client: Any, node_id: str, start: datetime, end: datetime, limit: int
    ) -> None:
        self.client, self.node_id, self.start, self.end = client, node_id, start, end
        self.limit = limit
        self.capped = False
        #: the server's continuation point not yet followed: released if the read stops
        self._point: bytes | None = None

    async def pages(self) -> AsyncGenerator[list[Reading], None]:
        """The readings, oldest first. Raises ``UaStatusCodeError`` where the server keeps
        no history of the node, `OpcuaServerError` where it answers with something else."""
        from asyncua import ua

        details = ua.ReadRawModifiedDetails(
            IsReadModified=False,
            StartTime=self.start,
            EndTime=self.end,
            NumValuesPerNode=HISTORY_PAGE,
            ReturnBounds=True,
        )
        node = self.client.get_node(self.node_id)
        try:
            async with contextlib.aclosing(self._read(node, details)) as pages:
                async for page in pages:
                    yield page
        finally:
            if self._point is not None:
                await _release(node, details, self._point)

    async def _read(self, node: Any, details: Any) -> AsyncGenerator[list[Reading], None]:
        after: datetime | None = None  # paged by time: what was read up to
        read = 0
        self._point = None
        for _ in range(MAX_HISTORY_READS):
            result = await node.history_read(details, self._point)
            self._point = None  # (followed: the server has let it go)
            result.StatusCode.check()
            self._point = result.ContinuationPoint or None
            values = getattr(result.HistoryData, "DataValues", None)
            if not isinstance(values, list):
                raise OpcuaServerError(
                    f"history of {self.node_id}: the server answered with "
                    f"{type(result.HistoryData).__name__}, not data values"
                )
            taken = min(len(values), self.limit - read)
            page = [screened(dv) for dv in values[:taken] if not no_value(dv)]
            read += taken
            if after is None:
                yield page
            else:  # paged by time: the page begins with the last one read before
                yield [r for r in page if r.taken is not None and r.taken > after]
            if read >= self.limit:
                self.capped = True
                log.error(
                    "opcua %s: history from %s holds more than %d values; the rest is not read",
                    self.node_id,
                    self.start.isoformat(),
                    self.limit,
                )
                return
            if self._point is None:
                if len(values) < HISTORY_PAGE:
                    return  # all of it
                # a full page and no continuation point: page on from its newest time
                newest = max((t for r in page if (t := r.taken) is not None), default=None)
                if newest is None or (after is not None and newest <= after):
                    log.error(
                        "opcua %s: history holds more than %d values at %s; the rest is not read",
                        self.node_id,
                        HISTORY_PAGE,
                        newest,
                    )
                    return
                after = details.StartTime = newest
        self.capped = True
        log.error(
            "opcua %s: history not read to its end in %d requests; the rest is not read",
            self.node_id,
            MAX_HISTORY_READS,
        )


async def _release(node: Any, details: Any, point: bytes) -> None:
    """Tell the server a continuation point will not be followed (a read stopped early:
    capped, or the connector stopping), so that it frees it: a server keeps a few per
    session, and one whose points were all held refused every later node's history."""
    from asyncua import ua

    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.ReleaseContinuationPoints = True
    params.NodesToRead.append(
        ua.HistoryReadValueId(NodeId=node.nodeid, IndexRange="", ContinuationPoint=point)
    )
    try:
        await node.session.history_read(params)
    except Exception as exc:  # the read is over either way; the server may be gone
        log.info("opcua %s: continuation point not released: %s", node.nodeid, exc)
