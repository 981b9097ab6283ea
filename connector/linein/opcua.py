"""OPC UA connector (asyncua): subscribe to configured nodes, store readings, survive outages.

One session at a time: connect (with the configured security mode and certificates),
subscribe, backfill, and store data changes until the connection is lost or the
connector is stopped; then wait ``reconnect_s`` and start over.

The order is what makes an outage lose nothing. The subscription is created FIRST, so
every value written from then on arrives live (queued while the backfill runs); the
backfill then reads the server's history (where it keeps one) for each node from just
after the newest reading stored of it, so everything written before the subscription
comes from history. Reading history first and subscribing second (as this connector
once did) loses every value written in between except the last (the subscription's
first value): on a loaded machine that window is long enough to lose readings. A
server historizes asynchronously (asyncua's own history is a subscription of its
own), so a value written just before our subscription may not be in its history yet
when we read: the backfill reads again after ``history_settle_s`` until a read brings
nothing new (at most ``HISTORY_REREADS`` times). The backfill starts strictly after
the newest stored reading of the node, so it stores no duplicates of its own; what the
live path and the backfill both deliver (the subscription's first value is the current
one) has the same source timestamp and so the same natural key: stored once.

A backfilled reading is stored with the batch and order that were current when it was
taken, not those current now: where the server keeps the history of a context node too,
the backfill reads it and takes, for each reading, the newest context value at or
before the reading's source time (a gap can span a batch change). Live data changes are
matched the same way against that history and the context changes seen since, so the
re-subscription's first value (an old reading) keeps the batch it was taken in too.
For a reading older than all that was ever known of the context (at a start, before the
server's context history begins), the current value is used. A server without context
history still says when the current value was set (its source time, read at every
connection): after an outage, backfilled readings taken before that keep the value seen
live before the outage (they took the current one: another batch, where it changed).
Each drained batch of notifications takes its context changes before its readings: a
server may group one publish's notifications by monitored item rather than by time
(asyncua does), so a batch change can arrive behind a reading taken after it.

A reading older than the oldest context change still *kept* is refused: its batch (or
order) was known once, but the live history keeps only ``HISTORY_KEEP`` behind the
newest reading and at most ``MAX_HISTORY`` changes, and the one in force when it was
taken is gone. Such a reading used to take the value current now: another batch, where
one changed since, silently. Refused, not stored without its batch: the connector
cannot tell a reading that arrives late for the first time (a gateway flushing its
buffer) from one delivered again (the re-subscription's first value of a node unchanged
for hours). A guess (or no batch) would store a reading that is new under the wrong
batch; one delivered again with another batch than the stored one is refused whatever
the connector did (a line source never changes a stored reading, `connector.linein.sink`).
A refusal changes nothing stored; the sink counts it and logs it with its node, value
and time (``opcua:NODE:n: batch_id: value 1.2 taken ...: the batch then is forgotten
...``), and a reading that was new can be loaded from a file with its batch.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from qdspace.connector.ingest import BadLine
from qdspace.connector.linein.config import OpcuaConfig, OpcuaNode
from qdspace.connector.linein.mapping import opcua_row
from qdspace.connector.linein.sink import Item, MeasurementSink

log = logging.getLogger("qdspace.connector.linein.opcua")

#: readings stored per ingest call at most (a burst is split)
BATCH = 500
#: a backfill reads this far past our clock: a tool's clock may run ahead of ours
CLOCK_SKEW = timedelta(minutes=5)
#: a context node's history is read this far before the oldest reading backfilled
CONTEXT_LOOKBACK = timedelta(days=7)
#: a backfill reads a node's history again at most this often while reads bring more
HISTORY_REREADS = 5
#: live, a context node's changes are kept this far behind the newest source time seen
#: (with the one current at the cut: a reading delivered later takes it, one older than
#: that change is refused); the history grows with every change otherwise, for as long
#: as the connector runs
HISTORY_KEEP = timedelta(hours=1)
#: and at most this many per context node (beyond, the oldest quarter goes)
MAX_HISTORY = 10_000


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _taken(dv: Any) -> datetime | None:
    """When a reading was taken: its source time, else the server's, in UTC."""
    at = dv.SourceTimestamp or dv.ServerTimestamp
    return None if at is None else _utc(at)


class _ContextHistory:
    """A context node's values by source time: which was current at a given moment."""

    def __init__(self, values: list[tuple[datetime, Any]]) -> None:
        values.sort(key=lambda tv: tv[0])
        self.times = [t for t, _ in values]
        self.values = [v for _, v in values]
        #: once changes were dropped (trim, cap): the oldest change kept then; the value
        #: in force before it was known and is forgotten (None: nothing dropped yet)
        self.horizon: datetime | None = None

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


class _Changes:
    """asyncua's subscription handler: data changes onto a queue (in the event loop)."""

    def __init__(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self.queue = queue

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.queue.put_nowait((node.nodeid.to_string(), data.monitored_item.Value))

    def status_change_notification(self, status: Any) -> None:
        log.warning("opcua: subscription status %s", status)


class OpcuaConnector:
    def __init__(self, config: OpcuaConfig, sink: MeasurementSink) -> None:
        self.config = config
        self.sink = sink
        self.by_id = {n.node_id: n for n in config.nodes}
        self.context: dict[str, Any] = {}
        #: context values by source time (the server's history, then what arrived live)
        self.history: dict[str, _ContextHistory] = {}
        #: the newest source time delivered live (the history is trimmed behind it)
        self.newest: datetime | None = None
        self.sessions = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop`` is set; every failure is logged and retried."""
        from asyncua import ua
        from asyncua.ua.uaerrors import UaError

        # the ids as the server reports them back in notifications
        self.by_id = {ua.NodeId.from_string(n.node_id).to_string(): n for n in self.config.nodes}
        while not stop.is_set():
            try:
                await self._session(stop)
            except (OSError, TimeoutError, ConnectionError, UaError) as exc:
                log.warning(
                    "opcua %s: %s: %s; reconnecting in %.1f s",
                    self.config.endpoint,
                    type(exc).__name__,
                    exc,
                    self.config.reconnect_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.reconnect_s)

    async def _client(self) -> Any:
        from asyncua import ua
        from asyncua.client.client import Client
        from asyncua.crypto import security_policies

        config = self.config
        client = Client(config.endpoint, timeout=config.timeout_s)
        client.application_uri = config.application_uri
        client.name = client.description = "qdspace line connector"
        sec = config.security
        if sec.mode != "None":
            policy = getattr(security_policies, f"SecurityPolicy{sec.policy}")
            await client.set_security(
                policy,
                certificate=str(sec.certificate),
                private_key=str(sec.private_key),
                server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
                mode=getattr(ua.MessageSecurityMode, sec.mode),
            )
        return client

    async def _session(self, stop: asyncio.Event) -> None:
        client = await self._client()
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            log.warning("opcua %s: connection lost: %s", self.config.endpoint, exc)
            lost.set()

        client.connection_lost_callback = on_lost
        await client.connect()
        self.sessions += 1
        log.info("opcua %s: connected (%s)", self.config.endpoint, self.config.security.mode)
        try:
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            starts = await self._backfill_starts() if self.config.history else {}
            await self._read_context(client)
            # subscribe first: from here on every value arrives live (queued meanwhile)
            subscription = await client.create_subscription(
                self.config.publishing_interval_ms, _Changes(queue)
            )
            watched = [*self.by_id, *self._context_ids()]
            await subscription.subscribe_data_change([client.get_node(i) for i in watched])
            # then the history of what was written before (the gap since the last session)
            await self._backfill(client, starts)
            await self._pump(queue, stop, lost)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.config.timeout_s)

    def _context_ids(self) -> list[str]:
        ids = {n.batch_id_node for n in self.config.nodes} | {
            n.order_id_node for n in self.config.nodes
        }
        from asyncua import ua

        return sorted(ua.NodeId.from_string(i).to_string() for i in ids if i)

    async def _read_context(self, client: Any) -> None:
        """Each context node's value now, with its source time: after an outage it is a
        change the connector did not see live, and the backfill must know when it came
        (readings taken before it keep the value seen before the outage)."""
        for node_id in self._context_ids():
            self._context_change(node_id, await client.get_node(node_id).read_data_value())

    async def _backfill_starts(self) -> dict[str, tuple[datetime, bool]]:
        """Per node: where its backfill starts, and whether that is a stored reading's time
        (then the backfill takes only what is strictly newer)."""
        now = datetime.now(UTC)
        starts: dict[str, tuple[datetime, bool]] = {}
        for node in self.config.nodes:
            since = await asyncio.to_thread(self.sink.latest, node.equipment, node.element)
            if since is None:
                starts[node.node_id] = (now - timedelta(seconds=self.config.backfill_max_s), False)
            else:
                starts[node.node_id] = (since, True)
        return starts

    async def _backfill(self, client: Any, starts: Mapping[str, tuple[datetime, bool]]) -> None:
        """Each node's history from just after its newest stored reading up to now."""
        if not self.config.history:
            return
        end = datetime.now(UTC) + CLOCK_SKEW
        oldest = min(start for start, _ in starts.values())
        self.history.update(await self._context_history(client, oldest, end))
        histories = await self._settled_histories(client, starts, end)
        for node in self.config.nodes:
            start, stored = starts[node.node_id]
            values = histories.get(node.node_id)
            if values is None:
                continue
            if stored:  # the stored reading itself and anything older: not again
                values = [dv for dv in values if (_taken(dv) or start) > start]
            items = [self._item(node, dv) for dv in values]
            for i in range(0, len(items), BATCH):
                await asyncio.to_thread(self.sink.put, items[i : i + BATCH])
            log.info(
                "opcua %s: backfilled %d readings after %s%s",
                node.node_id,
                len(items),
                start.isoformat(),
                " (the newest stored)" if stored else "",
            )

    async def _settled_histories(
        self, client: Any, starts: Mapping[str, tuple[datetime, bool]], end: datetime
    ) -> dict[str, list[Any]]:
        """Each node's history from its start to ``end`` (a node without one is left
        out), read again after ``history_settle_s`` while a read brings values the one
        before did not have: a server historizes a write a moment after it is made."""
        from asyncua.ua.uaerrors import UaStatusCodeError

        async def read(node_id: str) -> list[Any]:
            node = client.get_node(node_id)
            return list(await node.read_raw_history(starts[node_id][0], end))

        out: dict[str, list[Any]] = {}
        for node_id in starts:
            try:
                out[node_id] = await read(node_id)
            except UaStatusCodeError as exc:
                log.info("opcua %s: no history for backfill: %s", node_id, exc)
        settle = self.config.history_settle_s
        for _ in range(HISTORY_REREADS if settle > 0 and out else 0):
            await asyncio.sleep(settle)
            grew = False
            for node_id, values in out.items():
                try:
                    again = await read(node_id)
                except UaStatusCodeError as exc:  # keep what the read before brought
                    log.info("opcua %s: history reread failed: %s", node_id, exc)
                    continue
                if len(again) > len(values):
                    log.debug("opcua %s: history grew %d -> %d", node_id, len(values), len(again))
                    out[node_id], grew = again, True
            if not grew:
                break
        return out

    async def _context_history(
        self, client: Any, start: datetime, end: datetime
    ) -> dict[str, _ContextHistory]:
        """The history of every context node the server keeps one of."""
        from asyncua.ua.uaerrors import UaStatusCodeError

        out: dict[str, _ContextHistory] = {}
        for node_id in self._context_ids():
            try:
                values = await client.get_node(node_id).read_raw_history(
                    start - CONTEXT_LOOKBACK, end
                )
            except UaStatusCodeError as exc:
                log.info("opcua %s: no context history: %s", node_id, exc)
                continue
            timed = [
                (_utc(dv.SourceTimestamp or dv.ServerTimestamp), dv.Value.Value)
                for dv in values
                if dv.Value is not None and (dv.SourceTimestamp or dv.ServerTimestamp)
            ]
            if timed:
                out[node_id] = _ContextHistory(timed)
        return out

    def _context_at(self, dv: Any) -> tuple[Mapping[str, Any], dict[str, datetime]]:
        """The context as it was when ``dv`` was taken (where history tells), and the
        context nodes whose value then is forgotten, each with its history's horizon."""
        taken = _taken(dv)
        if not self.history or taken is None:
            return self.context, {}
        context = dict(self.context)
        forgotten: dict[str, datetime] = {}
        for node_id, values in self.history.items():
            horizon = values.forgotten(taken)
            if horizon is not None:
                forgotten[node_id] = horizon
                continue
            known, value = values.at(taken)
            if known:
                context[node_id] = value
        return context, forgotten

    def _item(self, node: OpcuaNode, dv: Any) -> Item:
        value = dv.Value.Value if dv.Value is not None else None
        context, forgotten = self._context_at(dv)
        taken = _taken(dv)
        lost = None if taken is None else forgotten_context(node, value, taken, forgotten)
        if lost is not None:
            return (f"opcua:{node.node_id}", lost)
        row = opcua_row(node, value, dv.SourceTimestamp, dv.ServerTimestamp, context)
        return (f"opcua:{node.node_id}", row)

    def _context_change(self, node_id: str, dv: Any) -> None:
        """A context node's new value: current from now on, and in its history by source time."""
        value = dv.Value.Value if dv.Value is not None else None
        self.context[node_id] = value
        since = dv.SourceTimestamp or dv.ServerTimestamp
        if since is not None:
            self.history.setdefault(node_id, _ContextHistory([])).add(_utc(since), value)

    def _trim_history(self, changes: list[tuple[str, Any]]) -> None:
        """Forget the context changes no reading still to come can need (see HISTORY_KEEP);
        our clock bounds the newest time seen (a source clock far ahead would trim all)."""
        times = [t for _, dv in changes if (t := _taken(dv)) is not None]
        if not times:
            return
        newest = min(max(times), datetime.now(UTC) + CLOCK_SKEW)
        if self.newest is None or newest > self.newest:
            self.newest = newest
        for values in self.history.values():
            values.trim(self.newest - HISTORY_KEEP)

    async def _pump(
        self, queue: asyncio.Queue[tuple[str, Any]], stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        while not (stop.is_set() or lost.is_set()):
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(queue.get(), 0.2)
                changes = [first]
                while not queue.empty() and len(changes) < BATCH:
                    changes.append(queue.get_nowait())
                # context changes first: a server's publish groups its notifications by
                # monitored item, not by time (asyncua's does), so a batch change may come
                # after a reading taken later than it; each reading then takes its context
                # by source time from the history, which holds every change delivered
                for node_id, dv in changes:
                    if node_id not in self.by_id:  # a context node: the batch / order
                        self._context_change(node_id, dv)
                items = [
                    self._item(self.by_id[node_id], dv)
                    for node_id, dv in changes
                    if node_id in self.by_id
                ]
                if items:
                    await asyncio.to_thread(self.sink.put, items)
                self._trim_history(changes)
        if lost.is_set():
            raise ConnectionError("connection lost")
