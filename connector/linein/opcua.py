"""OPC UA connector (asyncua): subscribe to configured nodes, store readings, survive outages.

One session at a time: connect (with the configured security mode and certificates),
subscribe, backfill, and store data changes until the connection is lost or the
connector is stopped; then wait and start over.

The order is what makes an outage lose nothing. The subscription is created FIRST, so
every value written from then on arrives live (queued while the backfill runs); the
backfill then reads the server's history (where it keeps one) for each node from just
after the newest reading the connector stored of it (its own mark, not another source's
newer reading: `opcua_marks`), so everything written before the subscription comes from
history. Reading history first and subscribing second (as this connector
once did) loses every value written in between except the last (the subscription's
first value): on a loaded machine that window is long enough to lose readings. A
server historizes asynchronously (asyncua's own history is a subscription of its
own), so a value written just before our subscription may not be in its history yet
when we read: the backfill reads again after ``history_settle_s`` until a read brings
nothing new (at most ``HISTORY_REREADS`` times). The backfill starts strictly after
the newest stored reading of the node, so it stores no duplicates of its own; what the
live path and the backfill both deliver (the subscription's first value is the current
one) has the same source timestamp and so the same natural key: stored once.

A reading is stored with the batch and order current when it was taken
(`connector.linein.opcua_context`): the backfill reads the history of the context nodes
too, and live data changes are matched against that history and the context changes
seen since, so the re-subscription's first value (an old reading) keeps the batch it was
taken in. For a reading older than all that was ever known of the context (at a start,
before the server's context history begins), the current value is used. A server
without context history still says when the current value was set (its source time, read
at every connection): after an outage, backfilled readings taken before that keep the
value seen live before the outage. Each drained batch of notifications takes its
context changes before its readings: a server may group one publish's notifications by
monitored item rather than by time (asyncua does), so a batch change can arrive behind a
reading taken after it.

What a server sends is checked as a peer's bytes are, and each check bounds what grew
here without bound:

- every data value is screened where it arrives, before it waits anywhere
  (`connector.linein.opcua_values`: numbers and short texts only, Good status only, no
  null time);
- history is read a page at a time, with a cap on what one read through a node takes
  (`connector.linein.opcua_history`);
- data changes wait for the store in a queue of ``QUEUED``. Where the store falls behind
  (a server that sends thousands a second), the rest of the session's changes are dropped
  and counted by node, and the session ends once the queue is stored; the next one
  backfills them from the server's history. Dropping all after the first keeps what is
  stored of each node a prefix of what was sent, so the backfill, which starts after the
  newest stored reading, misses none. (The queue had no bound: it held every change the
  store had not taken yet, all 6,000 of a burst the test's server sends in a second.) A
  server that keeps no history loses the dropped changes: memory that grows with what a
  server sends is not an option on a line PC, and the log says what was dropped of which
  node;
- a session that fails for any reason is logged and retried (an exception no one
  foresaw ended the connector for good); the wait doubles after each session that ends
  before the longest wait, up to ``MAX_BACKOFF`` times ``reconnect_s`` (a server that
  drops every connection at once was reconnected to every ``reconnect_s``, for ever).

The node ids are the configuration's: the connector browses nothing, and a notification
is matched to its node by the client handle asyncua gave it (one for a handle it did not
give is dropped there), so a server cannot make the connector store under a node id of
its choosing. What asyncua itself takes in (a message's size, its chunks) is asyncua's to
bound: it adopts the limits the server acknowledges (100 MB from asyncua's own server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from qdspace.connector.linein.config import OpcuaConfig, OpcuaNode
from qdspace.connector.linein.mapping import opcua_row
from qdspace.connector.linein.opcua_changes import _Changes
from qdspace.connector.linein.opcua_context import (
    HISTORY_KEEP,
    MAX_HISTORY,
    ContextHistory,
    Refused,
    forgotten_context,
    refused_context,
)
from qdspace.connector.linein.opcua_history import MAX_BACKFILL, HistoryRead, is_fresh
from qdspace.connector.linein.opcua_marks import (
    Untimed,
    Watermarks,
    backfill_start,
    floor_of,
    source_of,
)
from qdspace.connector.linein.opcua_values import OpcuaServerError, Reading, screened
from qdspace.connector.linein.sink import Item, MeasurementSink

__all__ = ["OpcuaConnector", "OpcuaServerError", "Reading", "screened"]

log = logging.getLogger("qdspace.connector.linein.opcua")

#: readings stored per ingest call at most (a burst is split)
BATCH = 500
#: data changes waiting for the store at most; beyond, the session's others are dropped
#: (and backfilled by the next session)
QUEUED = 20 * BATCH
#: a backfill reads this far past our clock: a tool's clock may run ahead of ours
CLOCK_SKEW = timedelta(minutes=5)
#: a context node's history is read this far before the oldest reading backfilled
CONTEXT_LOOKBACK = timedelta(days=7)
#: a backfill reads a node's history again at most this often while reads bring more
HISTORY_REREADS = 5
#: the wait before reconnecting grows to at most this many times ``reconnect_s``
MAX_BACKOFF = 16


class OpcuaConnector:
    def __init__(self, config: OpcuaConfig, sink: MeasurementSink) -> None:
        self.config = config
        self.sink = sink
        self.by_id = {n.node_id: n for n in config.nodes}
        self.context: dict[str, Any] = {}
        #: context values by source time (the server's history, then what arrived live)
        self.history: dict[str, ContextHistory] = {}
        #: the newest source time delivered live (the history is trimmed behind it)
        self.newest: datetime | None = None
        self.sessions = 0
        #: how far the connector stored each node (the backfill's start), and readings
        #: without a source time (see `opcua_marks`)
        self.marks = Watermarks(config.state_file)
        self.untimed = Untimed()
        #: when this session's connection was made (loop time; None: not connected)
        self._connected_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop`` is set; every failure is logged and retried, after a
        wait that doubles while sessions end early (see the module's docstring)."""
        from asyncua import ua

        # the ids as the server reports them back in notifications
        self.by_id = {ua.NodeId.from_string(n.node_id).to_string(): n for n in self.config.nodes}
        loop = asyncio.get_running_loop()
        first = self.config.reconnect_s
        longest = first * MAX_BACKOFF
        wait = first
        while not stop.is_set():
            self._connected_at = None
            try:
                await self._session(stop)
            except Exception as exc:  # a broken server's answer can raise anything
                # the session held (timed from its connection, not from the attempt: a
                # server that never answers takes ``timeout_s`` each time, and must not
                # pass for one that held): start the waits over
                if self._connected_at is not None and loop.time() - self._connected_at >= longest:
                    wait = first
                self._failed(exc, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(wait * 2, longest)

    def _failed(self, exc: Exception, wait: float) -> None:
        """Log why a session ended: one line where it was foreseen (the network, the
        server's answers), with the traceback where it was not."""
        from asyncua.ua.uaerrors import UaError

        where = self.config.endpoint
        if isinstance(exc, OSError | TimeoutError | ConnectionError | UaError | OpcuaServerError):
            why = str(exc) or (
                f"no answer in {self.config.timeout_s:.1f} s"
                if isinstance(exc, TimeoutError)
                else "-"
            )
            log.warning(
                "opcua %s: %s: %s; reconnecting in %.1f s", where, type(exc).__name__, why, wait
            )
        else:
            log.error(
                "opcua %s: session failed: %s: %s; reconnecting in %.1f s",
                where,
                type(exc).__name__,
                exc,
                wait,
                exc_info=exc,
            )

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
        self._connected_at = asyncio.get_running_loop().time()
        self.sessions += 1
        log.info("opcua %s: connected (%s)", self.config.endpoint, self.config.security.mode)
        try:
            changes = _Changes(asyncio.Queue(maxsize=QUEUED))
            starts = await self._backfill_starts() if self.config.history else {}
            await self._read_context(client)
            # subscribe first: from here on every value arrives live (queued meanwhile)
            subscription = await client.create_subscription(
                self.config.publishing_interval_ms, changes
            )
            watched = [*self.by_id, *self._context_ids()]
            await subscription.subscribe_data_change([client.get_node(i) for i in watched])
            # then the history of what was written before (the gap since the last session)
            await self._backfill(client, starts, stop)
            await self._pump(changes, stop, lost)
        finally:
            self._mark(force=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.config.timeout_s)

    def _mark(self, force: bool = False) -> None:
        self.marks.update([n.node_id for n in self.config.nodes], self.sink.newest, force)

    def _put(self, items: list[Item | None]) -> None:
        """Store ``items`` (None: a reading without a source time, refused and counted)."""
        kept = [i for i in items if i is not None]
        if len(kept) < len(items):
            self.sink.put(kept, more_refused=len(items) - len(kept))
        else:
            self.sink.put(kept)
        self._mark()

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
            dv = await client.get_node(node_id).read_data_value()
            self._context_change(node_id, screened(dv))

    async def _backfill_starts(self) -> dict[str, tuple[datetime, bool]]:
        """Per node: where its backfill starts (after what this connector stored of it, not
        another source: `opcua_marks`), and whether that is a stored reading's time (then
        the backfill takes only what is strictly newer). Readings stored with a time ahead
        of our clock (a file from an exporter whose clock is wrong) are passed over."""
        now = datetime.now(UTC)
        floor = floor_of(now, self.config.backfill_max_s)
        starts: dict[str, tuple[datetime, bool]] = {}
        for node in self.config.nodes:
            latest = await asyncio.to_thread(
                self.sink.latest, node.equipment, node.element, now + CLOCK_SKEW
            )
            mark = self.marks.of(node.node_id, self.sink.newest)
            starts[node.node_id] = backfill_start(mark, latest, floor)
        return starts

    async def _backfill(
        self, client: Any, starts: Mapping[str, tuple[datetime, bool]], stop: asyncio.Event
    ) -> None:
        """Each node's history from just after its newest stored reading up to now, read
        again after ``history_settle_s`` while a read brings readings the one before did
        not have: a server historizes a write a moment after it is made. What a reread
        must not store again is known by its time: ``MAX_BACKFILL`` times a node at most."""
        if not self.config.history:
            return
        end = datetime.now(UTC) + CLOCK_SKEW
        oldest = min(start for start, _ in starts.values())
        self.history.update(await self._context_history(client, oldest, end))
        #: per node read to its end: the times of what was read (for the rereads)
        seen: dict[str, set[datetime]] = {}
        for node in self.config.nodes:
            if stop.is_set():
                return
            start, stored = starts[node.node_id]
            times: set[datetime] = set()
            done = await self._backfill_node(client, node, starts[node.node_id], end, times, stop)
            if done is None:
                continue
            n, whole = done
            log.info(
                "opcua %s: backfilled %d readings after %s%s",
                node.node_id,
                n,
                start.isoformat(),
                " (the newest stored)" if stored else "",
            )
            if whole:  # a read cut at MAX_BACKFILL would bring the same again
                seen[node.node_id] = times
        settle = self.config.history_settle_s
        for _ in range(HISTORY_REREADS if settle > 0 and seen else 0):
            await asyncio.sleep(settle)
            grew = False
            for node in self.config.nodes:
                if node.node_id not in seen or stop.is_set():
                    continue
                times = seen[node.node_id]
                done = await self._backfill_node(
                    client, node, starts[node.node_id], end, times, stop, again=True
                )
                if done is not None and done[0]:
                    log.debug("opcua %s: history brought %d more", node.node_id, done[0])
                    grew = True
            if not grew:
                break

    async def _backfill_node(
        self,
        client: Any,
        node: OpcuaNode,
        start_stored: tuple[datetime, bool],
        end: datetime,
        seen: set[datetime],
        stop: asyncio.Event,
        *,
        again: bool = False,
    ) -> tuple[int, bool] | None:
        """Store the readings of ``node``'s history that are not in ``seen`` (nor as old
        as the newest stored, where one is), a page at a time, and add their times to
        ``seen``: how many, and whether the history was read to its end (None: the
        server keeps none of it). A reading without a time is refused when not ``again``;
        ``stop`` ends the read after the page being stored."""
        from asyncua.ua.uaerrors import UaStatusCodeError

        start, stored = start_stored
        n = 0
        read = HistoryRead(client, node.node_id, start, end, MAX_BACKFILL)
        try:
            async with contextlib.aclosing(read.pages()) as pages:
                async for page in pages:
                    fresh = [r for r in page if is_fresh(r, start if stored else None, seen, again)]
                    seen.update(r.taken for r in fresh if r.taken is not None)
                    items = [self._item(node, r) for r in fresh]
                    for i in range(0, len(items), BATCH):
                        await asyncio.to_thread(self._put, items[i : i + BATCH])
                    n += len(items)
                    if stop.is_set():
                        return n, False
        except UaStatusCodeError as exc:
            log.info("opcua %s: no history for backfill: %s", node.node_id, exc)
            return (n, False) if again else None
        except OpcuaServerError as exc:
            log.error("opcua %s: no backfill: %s", node.node_id, exc)
            return (n, False) if again else None
        return n, not read.capped

    async def _context_history(
        self, client: Any, start: datetime, end: datetime
    ) -> dict[str, ContextHistory]:
        """The history of every context node the server keeps one of (its newest
        ``MAX_HISTORY`` changes; none where it holds more than ``MAX_BACKFILL``)."""
        from asyncua.ua.uaerrors import UaStatusCodeError

        out: dict[str, ContextHistory] = {}
        for node_id in self._context_ids():
            timed: deque[tuple[datetime, Any]] = deque(maxlen=MAX_HISTORY)
            cut = False
            read = HistoryRead(client, node_id, start - CONTEXT_LOOKBACK, end, MAX_BACKFILL)
            try:
                async for page in read.pages():
                    for r in page:
                        if r.taken is not None:
                            cut = cut or len(timed) == MAX_HISTORY
                            value = r.value if r.refused is None else Refused(r.refused)
                            timed.append((r.taken, value))
            except UaStatusCodeError as exc:
                log.info("opcua %s: no context history: %s", node_id, exc)
                continue
            except OpcuaServerError as exc:
                log.error("opcua %s: no context history: %s", node_id, exc)
                continue
            if read.capped:
                log.error(
                    "opcua %s: context history not used: more than %d values (the batch or "
                    "order then is taken as without history)",
                    node_id,
                    MAX_BACKFILL,
                )
            elif timed:
                out[node_id] = ContextHistory(list(timed), cut=cut)
        return out

    def _context_at(self, taken: datetime | None) -> tuple[Mapping[str, Any], dict[str, datetime]]:
        """The context as it was at ``taken`` (where history tells), and the context
        nodes whose value then is forgotten, each with its history's horizon."""
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

    def _item(self, node: OpcuaNode, reading: Reading) -> Item | None:
        """The reading as the sink takes it; None: it has no source time (counted)."""
        source = source_of(node.node_id)
        if reading.source is None and not node.server_time:
            self.untimed.refuse(node.node_id)
            return None
        if reading.refused is not None:
            return (source, ("value", reading.refused))
        taken = reading.taken
        context, forgotten = self._context_at(taken)
        lost = None if taken is None else forgotten_context(node, reading.value, taken, forgotten)
        refused = lost or refused_context(node, context)
        if refused is not None:
            return (source, refused)
        row = opcua_row(node, reading.value, reading.source, reading.server, context)
        self.untimed.last[node.node_id] = reading.value
        return (source, row)

    def _repeated(self, node_id: str, reading: Reading, firsts: set[str]) -> bool:
        """A server-time node's first value of the session that is the last one stored."""
        first = node_id not in firsts
        firsts.add(node_id)
        node = self.by_id[node_id]
        if not (first and node.server_time and reading.source is None):
            return False
        return self.untimed.repeated(node.node_id, reading.value)

    def _context_change(self, node_id: str, reading: Reading) -> None:
        """A context node's new value: current from now on, and in its history by source
        time (a refused value as such: the readings that take it are refused)."""
        value = reading.value if reading.refused is None else Refused(reading.refused)
        self.context[node_id] = value
        if reading.taken is not None:
            self.history.setdefault(node_id, ContextHistory([])).add(reading.taken, value)

    def _trim_history(self, changes: list[tuple[str, Reading]]) -> None:
        """Forget the context changes no reading still to come can need (see HISTORY_KEEP);
        our clock bounds the newest time seen (a source clock far ahead would trim all)."""
        times = [t for _, r in changes if (t := r.taken) is not None]
        if not times:
            return
        newest = min(max(times), datetime.now(UTC) + CLOCK_SKEW)
        if self.newest is None or newest > self.newest:
            self.newest = newest
        for values in self.history.values():
            values.trim(self.newest - HISTORY_KEEP)

    async def _pump(self, changes: _Changes, stop: asyncio.Event, lost: asyncio.Event) -> None:
        queue = changes.queue
        firsts: set[str] = set()  # the nodes whose subscription's first value came
        while not (stop.is_set() or lost.is_set()):
            if changes.dropped and queue.empty():  # all that was queued is stored
                raise changes.overflow()
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(queue.get(), 0.2)
                batch = [first]
                while not queue.empty() and len(batch) < BATCH:
                    batch.append(queue.get_nowait())
                # context changes first: a server's publish groups its notifications by
                # monitored item, not by time (asyncua's does), so a batch change may come
                # after a reading taken later than it; each reading then takes its context
                # by source time from the history, which holds every change delivered
                for node_id, reading in batch:
                    if node_id not in self.by_id:  # a context node: the batch / order
                        self._context_change(node_id, reading)
                items = [
                    self._item(self.by_id[node_id], reading)
                    for node_id, reading in batch
                    if node_id in self.by_id and not self._repeated(node_id, reading, firsts)
                ]
                if items:
                    await asyncio.to_thread(self._put, items)
                self._trim_history(batch)
        if lost.is_set():
            if changes.dropped:  # what was dropped is said however the session ends
                log.warning("opcua %s: %s", self.config.endpoint, changes.overflow())
            raise ConnectionError("connection lost")
