"""A provider that holds a consumer's pull open without sending it anything.

SunArc agrees on Cellex's inspections and asks Cellex for a transfer; then Cellex's node
stops and a rogue server takes its place: Cellex's own certificate on Cellex's gRPC
address, so SunArc's pull reaches it as Cellex. It answers the Pull either with nothing
at all, the stream held open, or with batches that bring no row and are never the last,
for ever. Either used to hold the transfer's task for good (and every fifth empty batch
cost a commit of the cursor): now the pull ends with a PeerError saying what the
provider did, the transfer stays where its rows stop, and once the real Cellex is back a
pull resumes it from that checkpoint to the end.

The consumer runs in the test's process (SunArc's own node directory, keys and SQLite
file, its node stopped), so that the pull's limits can be lowered here
(`PULL_IDLE_S`, `MAX_EMPTY_BATCHES`): the test waits for no deadline of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.transfer import TransferState
from qdspace.node.config import NodeSettings
from qdspace.node.context import build_context
from qdspace.node.errors import PeerError
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc import contracts_client
from qdspace.node.rpc.contracts_client import ContractClient
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

ROWS = 40
#: how long the rogue holds a silent pull at most: the old consumer waited for ever,
#: and then met the end of the stream instead of ending the pull itself
HOLD_S = 30.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "pull-idle")


class Rogue(RogueProvider):
    """Cellex's certificate on Cellex's address, answering Pull as told (`mode`)."""

    def __init__(self, net: LocalNetwork, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.left = threading.Event()  # the consumer left the stream
        super().__init__(net)

    def _pull(
        self, request: transfer_pb2.PullRequest, context: Any
    ) -> Iterator[transfer_pb2.RowBatch]:
        context.add_callback(self.left.set)
        if self.mode == "silent":
            self.left.wait(HOLD_S)  # the stream open, nothing sent
            return
        # batches of no row that keep the consumer where it stands, never the last
        # (bounded, so that a consumer that never ends the pull meets the stream's end)
        for _ in range(100_000):
            if not context.is_active():
                return
            self.sent += 1
            yield transfer_pb2.RowBatch(
                transfer_id=request.transfer_id,
                row_count=0,
                checkpoint=request.resume_from,
                last=False,
            )


def _agree(net: LocalNetwork) -> str:
    with net["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        ingest_inspections(supplier, [bulk_inspection(i, "IDLE") for i in range(ROWS)])
    with net["sunarc"].client() as oem:
        agreement: str = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])[
            "agreement_id"
        ]
    return agreement


def test_a_provider_that_sends_nothing_or_empty_batches_ends_the_pull(
    net: LocalNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    agreement = _agree(net)
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    monkeypatch.setattr(contracts_client, "PULL_IDLE_S", 0.5, raising=False)
    monkeypatch.setattr(contracts_client, "MAX_EMPTY_BATCHES", 20, raising=False)
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

        with Rogue(net, "silent") as rogue:
            with pytest.raises(PeerError, match="sent no batch") as idle:
                await client.pull(tid, batch_rows=10)
            assert "cellex" in str(idle.value) and tid in str(idle.value)
            # the consumer left the stream: the rogue's handler is not held
            assert await asyncio.to_thread(rogue.left.wait, HOLD_S)
        held = store.load_transfer(tid)
        assert held.state is TransferState.STARTED and held.offset == 0

        with Rogue(net, "empty") as rogue:
            with pytest.raises(PeerError, match="batches in a row without a row") as empty:
                await client.pull(tid, batch_rows=10)
            assert "cellex" in str(empty.value) and tid in str(empty.value)
            assert rogue.sent < 100_000
        held = store.load_transfer(tid)
        assert held.state is TransferState.STARTED and held.offset == 0

        # the real provider back: the transfer resumes from its checkpoint to the end
        await asyncio.to_thread(net.start, ["cellex"])
        done = await client.pull(tid, batch_rows=10)
        assert done.state is TransferState.COMPLETED and done.offset == ROWS
    finally:
        await client.close()
        await ctx.peers.close()
