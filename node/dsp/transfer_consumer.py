"""The consumer's side of DSP transfers: request, pull over the HTTP data plane, control.

`DspTransfers.request` asks the provider that agreed (its DSP address is the one the
negotiation ran against) for a transfer under a DSP agreement; the provider's
TransferStartMessage arrives at the callback (`node.dsp.transfers`) with a data address
(`on_start`), and the node then pulls it in the background: batch by batch, each
batch's checkpoint verified against the consumer's own (`accept_batch`) and committed
with its rows in one transaction (`commit_received_batch`, the gRPC consumer's store
path), so a consumer cut off resumes exactly where its rows stop. At the last batch it
records the provider's completion and acknowledges it with a TransferCompletionMessage.
A live-stream address is followed instead, each group of rows stored as the gRPC
subscription stores them (`store_received`).

Data addresses live in memory only (a token lives minutes): after a restart the node
asks each provider again for every transfer it was receiving (`resume_after_restart`,
through the outbox, so a provider that is down is asked until it answers), and a pull
continues from its checkpoint, a live stream after the last stream position stored (the
received rows' seq), so nothing is fetched twice.

The provider's side goes away too (it restarts, its network drops, a stream is cut): a
data plane that fails in a way that may pass (no connection, a 5xx, the body cut short,
a live stream the provider ended while the transfer is still STARTED here) is opened
again after a pause that doubles from `RETRY_FIRST_S` to `RETRY_MAX_S` and starts over
once rows flow, as the gRPC subscriber reconnects, the reason shown as `waiting` (a
consumer that stopped at the first cut would hold a copy that silently stops mirroring
the provider's). Rows this node has no room for (its disk, `node.disk_room`) wait the
same way: nothing of them was stored, and the data plane opens again from where its rows
stop. A token the provider no longer takes (401: it expired, or the provider
moved the transfer on) is not retried: the node asks for a new address, once, through
the outbox, and the answer restarts the data plane. What will not pass by waiting (a
refusal, a batch that breaks the checkpoint chain, a malformed body) stops it with its
error, resumable by the operator.

A node that stops serving closes its `DspTransfers` (`close`): a suspended hosted tenant,
one stopped or opened again, a node shutting down. Every data plane ends then, none
opens again, and the client's connections close; a batch being committed is committed to
its end first (its rows and checkpoint are one transaction), so nothing is written after
`close` returns: the database may be closed, or opened again by the node's next
instance, which asks the providers for new addresses (`resume_after_restart`) and goes
on from the rows held. A pull left running would go on filling the database of a tenant
its host suspended, and after a reopen write beside the new instance's pull.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractError,
    IllegalTransitionError,
    UnknownContractError,
)
from qdspace.connector.contract_store import DspProcess, IncomingRow, IncomingRun
from qdspace.connector.dsp_data import DataPlaneFormatError, DataReader, LiveRows
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import (
    TransferProcess,
    TransferState,
    accept_batch,
    completion_id,
    open_transfer,
)
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferRequest,
    TransferTermination,
)
from qdspace.connector.transfer_wire import RowBatch, row_seqs
from qdspace.node.dsp.client import DspHttp, outbox_message
from qdspace.node.dsp.transfer_process import (
    TRANSFER,
    DspTransferMoves,
    control_id,
    message_body,
    peer_url,
)
from qdspace.node.errors import PeerBusy, PeerError, PeerRefused, QuotaError
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.odrl.jsonld import decode

logger = logging.getLogger("node.dsp")
T = TypeVar("T")

BATCH_ROWS = 1000


#: the first pause before opening a data plane again (a busy provider, one gone away),
#: and the longest
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: how long a refused token waits before a new address is asked for: a suspension or
#: termination the provider sent as it closed the stream arrives meanwhile
REASK_GRACE_S = 1.0


@dataclass
class Delivery:
    """What this node knows of one transfer it receives over DSP (in memory)."""

    address: wire.DataAddress | None = None
    task: asyncio.Task[Any] | None = None
    received: int = 0
    position: str = ""
    error: str = ""  # why its data plane stopped
    waiting: str = ""  # what it waits for to open its data plane again, and why
    reconnects: int = 0  # how often it tried to open its data plane again after a failure
    reasked: bool = False  # a new address was asked for since the data plane last opened


#: a data plane's run: True when it is done, False when the provider ended it early
DataPlane = Callable[[str, Delivery], Awaitable[bool]]


@dataclass
class DspTransfers:
    """Consumer-side drivers of DSP transfers, and the operator's control of either side."""

    moves: DspTransferMoves
    http: DspHttp
    kick: Callable[[], None] = lambda: None
    batch_rows: int = BATCH_ROWS
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    #: set by `close`: no data plane opens any more
    closed: bool = field(default=False, init=False)

    @property
    def runtime(self) -> ContractRuntime:
        return self.moves.runtime

    def delivery(self, local_id: str) -> Delivery:
        return self.deliveries.setdefault(local_id, Delivery())

    def row(self, local_id: str) -> DspProcess:
        row = self.runtime.store.dsp.by_local(TRANSFER, local_id)
        if row is None:
            raise UnknownContractError(f"no DSP transfer {local_id[:128]} here")
        return row

    def provider_address(self, agreement_id: str) -> tuple[str, str]:
        """(DSP address, member id) of the provider of a DSP agreement we hold."""
        stored = self.runtime.store.agreement(agreement_id)
        terms = stored.signed.agreement
        if stored.role is not Role.CONSUMER:
            raise ContractDenied(f"agreement {agreement_id} is not one we received")
        negotiation = self.runtime.store.dsp.by_local("negotiation", terms.negotiation_id)
        if negotiation is None:
            raise ContractDenied(f"agreement {agreement_id} was not negotiated over DSP")
        return negotiation.callback, terms.provider_id

    async def request(self, agreement_id: str) -> tuple[DspProcess, TransferProcess]:
        """Ask the provider for a transfer under `agreement_id`; returns when it ACKed."""
        url, provider = await run_in_threadpool(self.provider_address, agreement_id)
        store = self.runtime.store
        pid = f"urn:uuid:{uuid.uuid4()}"
        now = self.runtime.clock.now()
        me = self.moves.me
        request = TransferRequest(f"{pid}:dsp-request", pid, me, agreement_id, provider, now)
        process = open_transfer(request, Role.CONSUMER)
        row = DspProcess(TRANSFER, pid, Role.CONSUMER.value, provider, pid, url)
        await run_in_threadpool(store.open_dsp_transfer, process, row, (), now)  # one commit
        callback = f"{self.moves.base_url}/callback"
        body = wire.request_message(pid, agreement_id, callback)
        try:
            ack = await self.http.post(f"{url}/transfers/request", provider, body)
        except PeerRefused as exc:  # the provider holds no such transfer: ours ends here
            await run_in_threadpool(self._refused, pid, provider, exc.reason)
            raise
        provider_pid, consumer_pid = await run_in_threadpool(_acknowledged, url, ack.content)
        if consumer_pid != pid:
            raise PeerError(f"DSP {url}: the provider answered for another transfer")
        await run_in_threadpool(store.dsp.set_peer_pid, TRANSFER, pid, provider_pid)
        return self.row(pid), process

    def _refused(self, pid: str, provider: str, reason: str) -> None:
        """Our copy of a transfer the provider refused to open: TERMINATED, saying why
        (else it would wait in REQUESTED for a start that never comes). A provider that
        refused and still called back has moved it meanwhile: the copy as it is now ends."""
        store = self.runtime.store
        try:
            before = store.load_transfer(pid)
            at = max(self.runtime.clock.now(), before.updated_at)
            why = f"refused by the provider: {reason}"
            refused = TransferTermination(f"{pid}:dsp-refused", pid, provider, why, at)
            store.save_transfer(before, apply_transfer(before, refused))
        except ContractError as exc:  # (it finished meanwhile): the refusal is still told
            logger.warning("DSP transfer %s refused, left as it is: %s", pid, exc)

    def resume_after_restart(self) -> list[str]:
        """Ask again for a data address of every DSP transfer this node was receiving when
        it stopped (addresses live in memory): a consumer's TransferStartMessage to each
        provider, queued in the outbox (retried until the provider is reached); its answer
        brings a new address and the pull or stream continues where the rows held stop."""
        store, now = self.runtime.store, self.runtime.clock.now()
        messages = []
        for _process, row in store.receiving():
            if row is None or not row.peer_pid:  # a gRPC transfer, or never acknowledged
                continue
            messages.append(
                outbox_message(
                    row.peer_id,
                    row.local_id,
                    control_id(row.local_id, "resume"),
                    peer_url(row, "start"),
                    message_body(row, "start"),
                )
            )
            logger.info("DSP transfer %s: asking %s for a new address", row.local_id, row.peer_id)
        if messages:
            store.enqueue(messages, now)  # one transaction for them all
            self.kick()
        return [m.process_id for m in messages]

    # ----------------------------------------------------------- callbacks

    def on_start(self, row: DspProcess, address: wire.DataAddress | None) -> None:
        """The provider started (or resumed) the transfer: pull from its address."""
        delivery = self.delivery(row.local_id)
        if address is not None:
            delivery.address = address
        self.start_pull(row.local_id)

    def stop(self, local_id: str) -> None:
        delivery = self.deliveries.get(local_id)
        if delivery is not None and delivery.task is not None:
            delivery.task.cancel()

    def start_pull(self, local_id: str) -> None:
        delivery = self.delivery(local_id)
        if self.closed or delivery.address is None:
            return
        if delivery.task is not None and not delivery.task.done():
            return
        run = self._follow if delivery.address.delivery == wire.STREAM else self._pull
        delivery.task = asyncio.create_task(self._guarded(local_id, run))

    async def close(self) -> None:
        """End every data plane (cancelled and awaited: a batch being committed is
        committed first) and close the DSP client's connections; none opens again (see
        the module). Safe to call twice."""
        self.closed = True
        tasks = [d.task for d in self.deliveries.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.close()

    async def _guarded(self, local_id: str, run: DataPlane) -> None:
        """`run` the data plane of a transfer until it is done, opening it again after a
        failure that may pass (see the module docstring); any other failure stops it (it
        stays resumable, the operator sees why)."""
        delivery = self.delivery(local_id)
        pause = RETRY_FIRST_S
        while True:
            before = delivery.received
            try:
                delivery.error = ""
                if await run(local_id, delivery):
                    delivery.waiting = ""
                    return
                wait_for = "the provider to serve the live stream again"
                why = "the provider ended the stream"
            except asyncio.CancelledError:
                raise
            except PeerBusy as exc:  # our other transfers from it hold its stream slots
                wait_for, why = "a stream slot at the provider", str(exc)
            except QuotaError as exc:  # our disk (node.disk_room) or our host's quota
                wait_for, why = "room to store the rows", str(exc)
            except PeerRefused as exc:
                if exc.status == 401 and not delivery.reasked:
                    await self._ask_again(local_id, delivery, exc.reason)
                    return
                self._stopped(local_id, delivery, exc)
                return
            except PeerError as exc:  # no connection, a 5xx, a body cut short
                wait_for, why = "the provider to answer again", str(exc)
            except Exception as exc:
                self._stopped(local_id, delivery, exc)
                return
            if delivery.received > before:
                pause = RETRY_FIRST_S  # rows flowed: the next cut starts the pauses over
            delivery.waiting = f"{wait_for} (again in {pause:.0f} s): {why}"
            delivery.reconnects += 1
            logger.info("DSP transfer %s waits for %s", local_id, delivery.waiting)
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX_S, pause * 2)

    def _stopped(self, local_id: str, delivery: Delivery, exc: Exception) -> None:
        delivery.waiting = ""
        delivery.error = f"{type(exc).__name__}: {exc}"
        logger.warning("DSP transfer %s stopped: %s", local_id, delivery.error)

    async def _ask_again(self, local_id: str, delivery: Delivery, reason: str) -> None:
        """The provider no longer takes our token: ask it for a new data address (its
        TransferStartMessage restarts the data plane, `on_start`), unless the transfer
        was suspended or ended here meanwhile. Asked once until a data plane opens: a
        provider that refuses the new address's token too stops it."""
        delivery.waiting = f"a new data address from the provider: {reason}"
        await asyncio.sleep(REASK_GRACE_S)
        store = self.runtime.store
        process: TransferProcess = await run_in_threadpool(store.load_transfer, local_id)
        if process.state is not TransferState.STARTED:
            delivery.waiting = ""
            return
        delivery.reasked = True
        delivery.address = None  # (a start meanwhile would pull with the refused token)
        row = self.row(local_id)
        message = outbox_message(
            row.peer_id,
            row.local_id,
            control_id(row.local_id, "resume"),
            peer_url(row, "start"),
            message_body(row, "start"),
        )
        await _to_end(run_in_threadpool(store.enqueue, [message], self.runtime.clock.now()))
        self.kick()
        logger.info("DSP transfer %s: asking %s for a new address", local_id, row.peer_id)

    # ---------------------------------------------------------- data plane

    async def _pull(self, local_id: str, delivery: Delivery) -> bool:
        """Pull from the checkpoint to the last batch; True when done (or nothing to do)."""
        store = self.runtime.store
        process: TransferProcess = await run_in_threadpool(store.load_transfer, local_id)
        if process.state is not TransferState.STARTED or delivery.address is None:
            return True
        row = self.row(local_id)
        cp = process.checkpoint
        params = {"batch_rows": str(self.batch_rows)}
        if cp.offset or cp.position:
            params.update(offset=str(cp.offset), digest=cp.digest.hex(), position=cp.position)
        reader = DataReader(local_id)
        address = delivery.address
        async with self.http.stream(address.endpoint, row.peer_id, address.token, params) as body:
            self._opened(delivery)
            async for chunk in body.aiter_bytes():
                for group in reader.feed(chunk):
                    if not isinstance(group, RowBatch):
                        raise DataPlaneFormatError(f"DSP transfer {local_id}: live rows in a pull")
                    process = await self._commit(process, group)
                    delivery.received = process.offset
                    if group.last:
                        await self._complete(row, process, group)
                        return True
        reader.finish()
        raise PeerError(f"DSP transfer {local_id}: the data ended before its last batch")

    @staticmethod
    def _opened(delivery: Delivery) -> None:
        """The provider took our token and serves the data plane."""
        delivery.waiting = ""
        delivery.reasked = False

    async def _commit(self, process: TransferProcess, batch: RowBatch) -> TransferProcess:
        after = accept_batch(process, batch)
        rows = IncomingRun(process.offset, batch.orders(), batch.payloads())
        now = self.runtime.clock.now()
        commit = self.runtime.commit_received_batch
        await _to_end(asyncio.to_thread(commit, process, after, rows, now))
        return after

    async def _complete(self, row: DspProcess, process: TransferProcess, last: RowBatch) -> None:
        tid, now = process.transfer_id, self.runtime.clock.now()
        done = TransferCompletion(
            completion_id(process, Role.PROVIDER), tid, row.peer_id, last.checkpoint, now
        )
        completed = apply_transfer(process, done)
        await _to_end(run_in_threadpool(self.runtime.store.save_transfer, process, completed))
        await self.http.post(
            peer_url(row, "completion"), row.peer_id, message_body(row, "completion")
        )
        logger.info("DSP transfer %s completed: %d rows", tid, last.checkpoint.offset)

    async def _follow(self, local_id: str, delivery: Delivery) -> bool:
        """Follow a live stream; True when there is nothing to follow (the transfer is no
        longer STARTED here), False when the provider ended the stream."""
        row = self.row(local_id)
        process: TransferProcess = await run_in_threadpool(
            self.runtime.store.load_transfer, local_id
        )
        if process.state is not TransferState.STARTED or delivery.address is None:
            return True
        if not delivery.position:  # after a restart: where the rows we hold stop
            source = self.runtime.store.received_source
            held, delivery.received = await run_in_threadpool(source, process.transfer_id)
            delivery.position = "" if held is None else str(held)
        params = {"after": delivery.position} if delivery.position else {}
        reader = DataReader(local_id)
        address = delivery.address
        async with self.http.stream(address.endpoint, row.peer_id, address.token, params) as body:
            self._opened(delivery)
            async for chunk in body.aiter_bytes():
                for group in reader.feed(chunk):
                    if isinstance(group, LiveRows) and group.rows:
                        await self._store_live(process, delivery, group)
        reader.finish()
        return False

    async def _store_live(
        self, process: TransferProcess, delivery: Delivery, group: LiveRows
    ) -> None:
        seqs = row_seqs(group.positions)  # (checked as the group was read, `dsp_data`)
        rows = [
            IncomingRow(seq, r.order_id, r.payload) for seq, r in zip(seqs, group.rows, strict=True)
        ]
        now = self.runtime.clock.now()
        store, ids = self.runtime.store_received, (process.agreement_id, process.transfer_id)
        await _to_end(asyncio.to_thread(store, *ids, rows, now))
        delivery.received += len(rows)
        delivery.position = group.positions[-1]

    # ------------------------------------------------------------- control

    async def control(self, local_id: str, kind: str, reason: str = "") -> TransferProcess:
        """The operator's suspend (``suspension``), terminate (``termination``) or resume
        (``start``) of a DSP transfer, on whichever side this node is."""
        row = await run_in_threadpool(self.row, local_id)
        body = message_body(row, kind, reason)
        consumer = row.role == Role.CONSUMER.value
        if kind != "start":
            self.stop(local_id)
        if consumer and kind == "start":  # the provider answers with a new data address
            process: TransferProcess = await run_in_threadpool(self.moves.load, row)
            if process.state not in (TransferState.STARTED, TransferState.SUSPENDED):
                raise IllegalTransitionError(
                    f"transfer {local_id}", process.state.value, "resuming it"
                )
            await self.http.post(peer_url(row, kind), row.peer_id, body)
            return process
        after = await run_in_threadpool(self.moves.own, row, kind, reason)
        self.kick()
        if kind != "start":  # a provider's resume goes through the outbox, with the address
            await self.http.post(peer_url(row, kind), row.peer_id, body)
        return after

    def status(self, local_id: str) -> tuple[DspProcess, TransferProcess, Delivery]:
        row = self.row(local_id)
        return row, self.moves.load(row), self.delivery(local_id)


async def _to_end(write: Awaitable[T]) -> T:
    """`write` (a database write in a worker thread) awaited to its end even when the
    task is cancelled meanwhile (`DspTransfers.close`): a cancelled await would leave the
    thread writing into a database about to be closed, or opened again by the node's next
    instance. The cancellation is raised once the write is done."""
    work = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # (seen: the task ends with its cancellation, not this)
        raise


def _acknowledged(url: str, content: bytes) -> tuple[str, str]:
    """The pids of a provider's TransferProcess acknowledgement (bounded, off the event
    loop: its JSON-LD is the provider's); what cannot be read is the provider's failure."""
    try:
        provider_pid, consumer_pid, _ = wire.read_pids(decode(content), "TransferProcess")
    except ValueError as exc:
        raise PeerError(f"DSP {url}: unreadable acknowledgement: {exc}") from None
    return provider_pid, consumer_pid
