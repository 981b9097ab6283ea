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
from datetime import datetime

from qdspace.connector.contract_store.received_model import (
    IncomingRow,
    IncomingRun,
    MirrorResult,
)
from qdspace.connector.transfer import TransferProcess
from qdspace.node.runtime.contracts_base import ContractBase, ReceivedRoom

__all__ = ["ConsumerReceipts", "ReceivedRoom"]


class ConsumerReceipts(ContractBase):
    """The consumer's writes of received rows (a mixin of `ContractRuntime`)."""

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
