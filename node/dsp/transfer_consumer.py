"""The consumer's side of DSP transfers: request, pull over the HTTP data plane, control.

`DspTransfers.request` asks the provider that agreed (its DSP address is the one the
negotiation ran against) for a transfer under a DSP agreement; the provider's
TransferStartMessage arrives at the callback (`node.dsp.transfers`) with a data address
(`on_start`), and the node then pulls it in the background: batch by batch, each
batch's checkpoint verified against the consumer's own (`accept_batch`) and committed
with its rows in one transaction (`commit_transfer_batch`, the gRPC consumer's store
path), so a consumer cut off resumes exactly where its rows stop. At the last batch it
records the provider's completion and acknowledges it with a TransferCompletionMessage.
A live-stream address is followed instead, each group of rows stored as the gRPC
subscription stores them (`store_received_rows`).

Data addresses live in memory only (a token lives minutes): after a restart the node
asks each provider again for every transfer it was receiving (`resume_after_restart`,
through the outbox, so a provider that is down is asked until it answers), and a pull
continues from its checkpoint, a live stream after the last stream position stored (the
received rows' seq), so nothing is fetched twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractError,
    IllegalTransitionError,
    UnknownContractError,
)
from qdspace.connector.contract_store import DspProcess, IncomingRow, IncomingRun
from qdspace.connector.dsp_data import DataReader, LiveRows
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
from qdspace.connector.transfer_wire import RowBatch
from qdspace.node.dsp.client import DspHttp, outbox_message
from qdspace.node.dsp.transfer_process import (
    TRANSFER,
    DspTransferMoves,
    control_id,
    message_body,
    peer_url,
)
from qdspace.node.errors import PeerBusy, PeerError, PeerRefused
from qdspace.node.runtime.contracts import ContractRuntime

logger = logging.getLogger("node.dsp")

BATCH_ROWS = 1000


#: the first pause before asking a busy provider again (429), and the longest
BUSY_FIRST_S = 1.0
BUSY_MAX_S = 30.0


@dataclass
class Delivery:
    """What this node knows of one transfer it receives over DSP (in memory)."""

    address: wire.DataAddress | None = None
    task: asyncio.Task[Any] | None = None
    received: int = 0
    position: str = ""
    error: str = ""  # why its data plane stopped
    waiting: str = ""  # why it waits to open its data plane (the provider is busy)


@dataclass
class DspTransfers:
    """Consumer-side drivers of DSP transfers, and the operator's control of either side."""

    moves: DspTransferMoves
    http: DspHttp
    kick: Callable[[], None] = lambda: None
    batch_rows: int = BATCH_ROWS
    deliveries: dict[str, Delivery] = field(default_factory=dict)

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
            ack = (await self.http.post(f"{url}/transfers/request", provider, body)).json()
        except PeerRefused as exc:  # the provider holds no such transfer: ours ends here
            await run_in_threadpool(self._refused, pid, provider, exc.reason)
            raise
        provider_pid, consumer_pid, _ = wire.read_pids(ack, "TransferProcess")
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
        if delivery.address is None or (delivery.task is not None and not delivery.task.done()):
            return
        run = self._follow if delivery.address.delivery == wire.STREAM else self._pull
        delivery.task = asyncio.create_task(self._guarded(local_id, run))

    async def _guarded(self, local_id: str, run: Any) -> None:
        """`run` the data plane of a transfer; a provider at its cap of our streams in
        flight (429: our other transfers from it hold them) is asked again after a pause
        that doubles to `BUSY_MAX_S`, the reason shown meanwhile; any other failure stops
        it (it stays resumable, the operator sees why)."""
        delivery = self.delivery(local_id)
        pause = BUSY_FIRST_S
        while True:
            try:
                delivery.error = ""
                await run(local_id, delivery)
                return
            except asyncio.CancelledError:
                raise
            except PeerBusy as exc:
                delivery.waiting = f"a stream slot at the provider (again in {pause:.0f} s): {exc}"
                logger.info("DSP transfer %s waits for %s", local_id, delivery.waiting)
                await asyncio.sleep(pause)
                pause = min(BUSY_MAX_S, pause * 2)
            except Exception as exc:  # the transfer stays resumable; the operator sees why
                delivery.waiting = ""
                delivery.error = f"{type(exc).__name__}: {exc}"
                logger.warning("DSP transfer %s stopped: %s", local_id, delivery.error)
                return

    # ---------------------------------------------------------- data plane

    async def _pull(self, local_id: str, delivery: Delivery) -> None:
        store = self.runtime.store
        process: TransferProcess = await run_in_threadpool(store.load_transfer, local_id)
        if process.state is not TransferState.STARTED or delivery.address is None:
            return
        row = self.row(local_id)
        cp = process.checkpoint
        params = {"batch_rows": str(self.batch_rows)}
        if cp.offset or cp.position:
            params.update(offset=str(cp.offset), digest=cp.digest.hex(), position=cp.position)
        reader = DataReader(local_id)
        address = delivery.address
        async with self.http.stream(address.endpoint, row.peer_id, address.token, params) as body:
            delivery.waiting = ""  # the provider took it
            async for chunk in body.aiter_bytes():
                for group in reader.feed(chunk):
                    if not isinstance(group, RowBatch):
                        raise PeerError(f"DSP transfer {local_id}: live rows in a pull")
                    process = await self._commit(process, group)
                    delivery.received = process.offset
                    if group.last:
                        await self._complete(row, process, group)
                        return
        reader.finish()
        raise PeerError(f"DSP transfer {local_id}: the data ended before its last batch")

    async def _commit(self, process: TransferProcess, batch: RowBatch) -> TransferProcess:
        after = accept_batch(process, batch)
        rows = IncomingRun(process.offset, batch.orders(), batch.payloads())
        now = self.runtime.clock.now()
        store = self.runtime.store
        await asyncio.to_thread(store.commit_transfer_batch, process, after, rows, now)
        return after

    async def _complete(self, row: DspProcess, process: TransferProcess, last: RowBatch) -> None:
        tid, now = process.transfer_id, self.runtime.clock.now()
        done = TransferCompletion(
            completion_id(process, Role.PROVIDER), tid, row.peer_id, last.checkpoint, now
        )
        completed = apply_transfer(process, done)
        await run_in_threadpool(self.runtime.store.save_transfer, process, completed)
        await self.http.post(
            peer_url(row, "completion"), row.peer_id, message_body(row, "completion")
        )
        logger.info("DSP transfer %s completed: %d rows", tid, last.checkpoint.offset)

    async def _follow(self, local_id: str, delivery: Delivery) -> None:
        row = self.row(local_id)
        process: TransferProcess = await run_in_threadpool(
            self.runtime.store.load_transfer, local_id
        )
        if process.state is not TransferState.STARTED or delivery.address is None:
            return
        if not delivery.position:  # after a restart: where the rows we hold stop
            source = self.runtime.store.received_source
            held, delivery.received = await run_in_threadpool(source, process.transfer_id)
            delivery.position = "" if held is None else str(held)
        params = {"after": delivery.position} if delivery.position else {}
        reader = DataReader(local_id)
        address = delivery.address
        async with self.http.stream(address.endpoint, row.peer_id, address.token, params) as body:
            delivery.waiting = ""  # the provider took it
            async for chunk in body.aiter_bytes():
                for group in reader.feed(chunk):
                    if isinstance(group, LiveRows) and group.rows:
                        await self._store_live(process, delivery, group)
        reader.finish()

    async def _store_live(
        self, process: TransferProcess, delivery: Delivery, group: LiveRows
    ) -> None:
        rows = [
            IncomingRow(int(p), r.order_id, r.payload)
            for p, r in zip(group.positions, group.rows, strict=True)
        ]
        store, now = self.runtime.store, self.runtime.clock.now()
        await asyncio.to_thread(
            store.store_received_rows, process.agreement_id, process.transfer_id, rows, now
        )
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
