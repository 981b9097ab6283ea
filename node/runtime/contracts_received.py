"""The consumer's side of deliveries: rows received from a provider, written to the mirror.

Every route by which a provider's rows reach this node (a gRPC pull's groups of batches,
a gRPC live subscription's events, a DSP pull's batches and a DSP live stream's rows)
writes them through one of the two methods here, so what is asked before a write is
asked on every route: on a managed host, the tenant's row and storage quotas
(`ReceivedRoom`, `node.host.admission.TenantAdmission.receive`). A group refused there
is not written, and nothing about it is recorded: a pull's cursor stays at the batch
before it and a stream's position at the row before it, so the transfer or subscription
goes on from exactly there once the tenant has room (resumed by the operator, or by a
live subscription's next reconnect). A node that is no host's tenant has no room to ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Protocol

from qdspace.connector.contract_store.received_model import (
    IncomingRow,
    IncomingRun,
    MirrorResult,
)
from qdspace.connector.transfer import TransferProcess
from qdspace.node.runtime.contracts_base import ContractBase


class ReceivedRoom(Protocol):
    """Whether rows received from a provider may be written (see the module)."""

    def receive(self, rows: int, size: int) -> AbstractContextManager[None]:
        """Held around the write of ``rows`` rows and ``size`` bytes (counted as in flight
        until it ends); refuses (raises) one that does not fit. Blocking: entered in the
        worker thread that writes them."""
        ...


class ConsumerReceipts(ContractBase):
    """The consumer's writes of received rows (a mixin of `ContractRuntime`)."""

    #: a managed host's quotas of this tenant; None on a node of its own
    received_room: ReceivedRoom | None = None

    def commit_received_batch(
        self,
        before: TransferProcess,
        after: TransferProcess,
        rows: IncomingRun,
        at: datetime,
    ) -> MirrorResult:
        """A pull's verified rows and the transfer's cursor after them, in one
        transaction (`ContractStore.commit_transfer_batch`), if there is room."""
        with self._room(len(rows), sum(map(len, rows.payloads))):
            return self.store.commit_transfer_batch(before, after, rows, at)

    def store_received(
        self, agreement_id: str, source_id: str, rows: Sequence[IncomingRow], at: datetime
    ) -> MirrorResult:
        """A live stream's rows (`ContractStore.store_received_rows`), if there is room."""
        with self._room(len(rows), sum(len(r.payload) for r in rows)):
            return self.store.store_received_rows(agreement_id, source_id, rows, at)

    def _room(self, rows: int, size: int) -> AbstractContextManager[None]:
        room = self.received_room
        return nullcontext() if room is None else room.receive(rows, size)
