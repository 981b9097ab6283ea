"""A provider that sends fields its agreement does not grant: the consumer keeps none of it.

SunArc agrees on Cellex's inspections with only ``verdict`` and ``score`` granted, and
asks Cellex for a transfer of one order; then Cellex's node stops and a rogue server
takes its place: Cellex's own certificate on Cellex's gRPC address, so SunArc's pull
reaches it as Cellex. It answers the Pull with one well-formed last batch (the checkpoint
chained right) whose rows carry the granted fields and also ``worker_name`` and ``ssn``:
personal data SunArc never agreed to receive. The consumer used to store and serve those
rows. Now the batch is refused whole (PERMISSION_DENIED, `ForeignRecordError`): nothing is
stored, the transfer stays where it was; and a batch with a row of an order the
agreement does not cover, the fields in order, is refused the same. Once the real Cellex is back the
pull resumes and stores the honest rows, with the granted fields only.

The consumer runs in the test's process (SunArc's own node directory, keys and SQLite
file, its node stopped), so that its pull is driven, and what it stored read, here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.contract_errors import ForeignRecordError
from qdspace.connector.transfer import TransferState
from qdspace.connector.transfer_wire import BatchRow, RowBatch, row_bytes
from qdspace.node.config import NodeSettings
from qdspace.node.context import build_context
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.contracts_client import ContractClient
from qdspace.node.rpc.contracts_transfer_serde import checkpoint_from_proto, row_batch_to_proto
from qdspace.protocols.v1 import transfer_pb2

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    RogueProvider,
    bulk_inspection,
    ingest_inspections,
    negotiate,
    oem_and_supplier,
    ok,
)

pytestmark = pytest.mark.integration

ROWS = 12
GRANTED = ["score", "verdict"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "extra-fields")


class Rogue(RogueProvider):
    """Cellex's certificate on Cellex's address, answering a Pull with one last batch of
    `rows` (payload, order) chained on from where the consumer stands."""

    def __init__(self, net: LocalNetwork, rows: list[tuple[dict[str, Any], str]]) -> None:
        self.rows = rows
        self.pulls = 0
        super().__init__(net)

    def _pull(
        self, request: transfer_pb2.PullRequest, context: Any
    ) -> Iterator[transfer_pb2.RowBatch]:
        self.pulls += 1
        rows = [BatchRow(row_bytes(row), order) for row, order in self.rows]
        checkpoint = checkpoint_from_proto(request.resume_from).extend(r.payload for r in rows)
        yield row_batch_to_proto(RowBatch.of(request.transfer_id, rows, checkpoint, last=True))


def _agree(net: LocalNetwork) -> str:
    with net["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        ingest_inspections(supplier, [bulk_inspection(i, "XF") for i in range(ROWS)])
    with net["sunarc"].client() as oem:
        agreement: str = negotiate(
            oem, "cellex", "inspections", orders=[CELLEX_ORDER], fields=GRANTED
        )["agreement_id"]
    return agreement


def test_rows_with_fields_outside_the_agreement_are_refused_and_nothing_is_stored(
    net: LocalNetwork,
) -> None:
    agreement = _agree(net)
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    ctx = build_context(NodeSettings.load(net["sunarc"].directory))
    try:
        asyncio.run(_scenario(net, ctx, agreement))
    finally:
        ctx.close()
    log = net["cellex"].log_path.read_text(errors="replace")
    assert "Traceback" not in log


async def _scenario(net: LocalNetwork, ctx: Any, agreement: str) -> None:
    assert ctx.contracts is not None
    client = ContractClient(ctx.contracts, ctx.peers, NodeMetrics())
    store = ctx.contracts.store
    try:
        process = await client.request_transfer(agreement, purpose=QA, order_id=CELLEX_ORDER)
        tid = process.transfer_id
        assert net.stop(["cellex"]) == {"cellex": 0}

        honest = [
            ({"@key": f"rogue-{i}", "@v": 1, "verdict": "pass", "score": 0.5}, CELLEX_ORDER)
            for i in range(3)
        ]
        personal = {"worker_name": "Alice Smith", "ssn": "123-45-6789"}
        hostile = [*honest, ({**honest[0][0], "@key": "rogue-9", **personal}, CELLEX_ORDER)]
        with Rogue(net, hostile) as rogue:
            with pytest.raises(ForeignRecordError, match="ssn") as refused:
                await client.pull(tid)
            assert refused.value.grpc_status == "PERMISSION_DENIED"
            assert rogue.pulls == 1
        assert store.count_received(agreement) == 0
        held = store.load_transfer(tid)
        assert held.state is TransferState.STARTED and held.offset == 0

        # the fields in order, but a row of an order the agreement does not cover
        astray = [*honest, ({**honest[0][0], "@key": "rogue-8"}, "PO-ELSEWHERE")]
        with Rogue(net, astray), pytest.raises(ForeignRecordError, match="ELSEWHERE"):
            await client.pull(tid)
        assert store.count_received(agreement) == 0
        assert store.load_transfer(tid).offset == 0

        # the real provider back: the pull resumes and stores the granted fields only
        await asyncio.to_thread(net.start, ["cellex"])
        done = await client.pull(tid)
        assert done.state is TransferState.COMPLETED and done.offset == ROWS
        rows = store.received_rows(agreement)
        assert len(rows) == ROWS
        for row in rows:
            assert set(row.decode()) <= {"@key", "@v", *GRANTED}, row.decode()
    finally:
        await client.close()
        await ctx.peers.close()
