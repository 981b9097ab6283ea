"""The batch and order a reading was taken in: context nodes' values by source time.

A reading is stored with the batch and order that were current when it was taken, not
those current now (a backfill or a late delivery can span a batch change), so the
connector keeps each context node's changes by source time (`ContextHistory`).

A reading older than the oldest context change still *kept* is refused
(`forgotten_context`): its batch (or order) was known once, but the live history keeps
only ``HISTORY_KEEP`` behind the newest reading and at most ``MAX_HISTORY`` changes, and
the one in force when it was taken is gone. Such a reading used to take the value current
now: another batch, where one changed since, silently. Refused, not stored without its
batch: the connector cannot tell a reading that arrives late for the first time (a
gateway flushing its buffer) from one delivered again (the re-subscription's first value
of a node unchanged for hours). A guess (or no batch) would store a reading that is new
under the wrong batch; one delivered again with another batch than the stored one is
refused whatever the connector did (a line source never changes a stored reading,
`connector.linein.sink`). A refusal changes nothing stored; the sink counts it and logs
it with its node, value and time (``opcua:NODE:n: batch_id: value 1.2 taken ...: the
batch then is forgotten ...``), and a reading that was new can be loaded from a file with
its batch.

A context value that was itself refused (`connector.linein.opcua_values`: a Bad batch
arrives as null) is kept as `Refused`, and refuses the readings that take it
(`refused_context`): they were stored without a batch.

Pure: no I/O, no asyncua.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qdspace.connector.ingest import BadLine
from qdspace.connector.linein.config import OpcuaNode

#: live, a context node's changes are kept this far behind the newest source time seen
#: (with the one current at the cut: a reading delivered later takes it, one older than
#: that change is refused); the history grows with every change otherwise, for as long
#: as the connector runs
HISTORY_KEEP = timedelta(hours=1)
#: and at most this many per context node (beyond, the oldest quarter goes)
MAX_HISTORY = 10_000


@dataclass(frozen=True, slots=True)
class Refused:
    """A context node's value that was refused (why): a reading that takes it is refused."""

    reason: str


def refused_context(node: OpcuaNode, context: Mapping[str, Any]) -> BadLine | None:
    """Why a reading of ``node`` is refused: the batch or order it takes from a context
    node is a value that was refused there (None: none is)."""
    for field_name, fixed, node_id in (
        ("batch_id", node.batch_id, node.batch_id_node),
        ("order_id", node.order_id, node.order_id_node),
    ):
        value = None if fixed or not node_id else context.get(node_id)
        if isinstance(value, Refused):
            return (field_name, f"context node {node_id}: {value.reason}")
    return None


class ContextHistory:
    """A context node's values by source time: which was current at a given moment."""

    def __init__(self, values: list[tuple[datetime, Any]], *, cut: bool = False) -> None:
        values.sort(key=lambda tv: tv[0])
        self.times = [t for t, _ in values]
        self.values = [v for _, v in values]
        #: once changes were dropped (trim, cap): the oldest change kept then; the value
        #: in force before it was known and is forgotten (None: nothing dropped yet;
        #: ``cut``: older ones were dropped before these came)
        self.horizon: datetime | None = self.times[0] if cut and self.times else None

    def add(self, when: datetime, value: Any) -> None:
        if not self.times or when >= self.times[-1]:  # in order, the common case: O(1)
            self.times.append(when)
            self.values.append(value)
        else:
            i = bisect.bisect_right(self.times, when)
            self.times.insert(i, when)
            self.values.insert(i, value)
        if len(self.times) > MAX_HISTORY:  # a quarter at once: amortized O(1) per add
            self._drop(len(self.times) - MAX_HISTORY * 3 // 4)

    def trim(self, before: datetime) -> None:
        """Forget the changes before ``before``, but the one current at it."""
        self._drop(bisect.bisect_right(self.times, before) - 1)

    def _drop(self, n: int) -> None:
        if n > 0:
            del self.times[:n]
            del self.values[:n]
            oldest = self.times[0]  # trim and cap always keep one
            self.horizon = oldest if self.horizon is None else max(self.horizon, oldest)

    def forgotten(self, when: datetime) -> datetime | None:
        """The horizon, where the value current at ``when`` was dropped (``when`` is before
        it: a change arriving late, older than it, cannot say what came between); else None."""
        return self.horizon if self.horizon is not None and when < self.horizon else None

    def __len__(self) -> int:
        return len(self.times)

    def at(self, when: datetime) -> tuple[bool, Any]:
        i = bisect.bisect_right(self.times, when)
        return (True, self.values[i - 1]) if i else (False, None)


def forgotten_context(
    node: OpcuaNode, value: Any, taken: datetime, forgotten: Mapping[str, datetime]
) -> BadLine | None:
    """Why a reading of ``node`` taken at ``taken`` is refused: the batch or order it
    takes from a context node was in force before that node's history horizon (in
    ``forgotten``), so it is no longer known (None: its context is known, or unused)."""
    for field_name, fixed, node_id in (
        ("batch_id", node.batch_id, node.batch_id_node),
        ("order_id", node.order_id, node.order_id_node),
    ):
        if fixed or not node_id or node_id not in forgotten:
            continue
        what = field_name.removesuffix("_id")
        return (
            field_name,
            f"value {str(value)[:32]} taken {taken.isoformat()}: the {what} then is forgotten "
            f"(older than the oldest {what} change kept, {forgotten[node_id].isoformat()}); "
            "not stored with a guess",
        )
    return None
