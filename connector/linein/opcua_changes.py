"""The OPC UA subscription's handler: data changes, screened, onto a bounded queue.

Why bounded, and why every change after the first dropped one is dropped too: see
`connector.linein.opcua` (what is stored of a node stays a prefix of what was sent, so
the next session's backfill misses none).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from qdspace.connector.linein.opcua_values import OpcuaServerError, Reading, screened

log = logging.getLogger("qdspace.connector.linein.opcua")


class _Changes:
    """asyncua's subscription handler: data changes, screened, onto a bounded queue (in the
    event loop). Once the queue is full, it drops every change of the session that comes
    after, counted by node (see the module's docstring)."""

    def __init__(self, queue: asyncio.Queue[tuple[str, Reading]]) -> None:
        self.queue = queue
        #: changes dropped by node id (the subscribed nodes': a bounded count)
        self.dropped: dict[str, int] = {}

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        node_id = node.nodeid.to_string()
        if not self.dropped and not self.queue.full():
            self.queue.put_nowait((node_id, screened(data.monitored_item.Value)))
            return
        if not self.dropped:
            log.error(
                "opcua %s: %d data changes wait for the store: this session's next changes "
                "are dropped, and the next session backfills them from the server's history",
                node_id,
                self.queue.qsize(),
            )
        self.dropped[node_id] = self.dropped.get(node_id, 0) + 1

    def status_change_notification(self, status: Any) -> None:
        log.warning("opcua: subscription status %s", status)

    def overflow(self) -> OpcuaServerError:
        """The error that ends a session whose changes came faster than they were stored."""
        most = sorted(self.dropped.items(), key=lambda kv: -kv[1])[:5]
        nodes = ", ".join(f"{node_id}: {n}" for node_id, n in most)
        return OpcuaServerError(
            f"data changes came faster than they were stored: {sum(self.dropped.values())} "
            f"dropped after {self.queue.maxsize} waited ({nodes}); the next session backfills them "
            "where the server keeps their history"
        )
