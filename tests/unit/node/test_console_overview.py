"""The console's overview reads what the outbox owes each peer, however the message was
addressed: gRPC notifications (quality alerts, case events, deletion receipts) are
addressed by the peer's name, the DSP binding's callbacks by its member id. Both are the
same link on the network picture; neither may turn the page into a 500 (a case event
owed by name once did, in the console abuse test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.connector.contract_store.outbox import OutboxMessage
from qdspace.node.console.overview import disk_check, local_state
from qdspace.node.context import NodeContext
from qdspace.node.member_ids import addressed_name

from .conftest import cellex_context

VOLTIS_ID = "voltis-0123456789ab"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeContext]:
    ctx = cellex_context(tmp_path)  # (a fresh node for each test here)
    yield ctx
    ctx.close()


def test_messages_owed_by_name_and_by_member_id_are_one_link_each(node: NodeContext) -> None:
    rt = node.contracts
    assert rt is not None
    now = rt.clock.now()
    rt.store.enqueue(
        [
            OutboxMessage("sunarc", "notification", "qc-1", "case:e1", b"x"),
            OutboxMessage("sunarc", "notification", "qc-1", "case:e2", b"x"),
            OutboxMessage("voltis", "notification", "qc-2", "case:e3", b"x"),
            OutboxMessage(VOLTIS_ID, "dsp", "p-1", "p-1:out", b"y"),
            OutboxMessage(VOLTIS_ID, "dsp", "p-1", "p-1:ack", b"y"),
        ],
        now,
    )
    overview = local_state(node)
    owed = {link.peer: link.owed for link in overview.links if link.owed}
    assert owed == {"sunarc": 2, "voltis": 3}


def test_a_name_the_node_knows_is_taken_as_it_is() -> None:
    # a member may be named like a member id; the peers known by name decide
    assert addressed_name("acme-0123456789ab", {"acme-0123456789ab"}) == "acme-0123456789ab"
    assert addressed_name("acme-0123456789ab") == "acme"
    assert addressed_name("sunarc") == "sunarc"
    assert addressed_name("") == ""


def test_the_overview_shows_the_free_disk_the_node_keeps(node: NodeContext) -> None:
    disk = {c.name: c for c in local_state(node).checks}["disk"]
    assert disk.ok and "free; keeps 1.0 GiB for its own records" in disk.detail, disk
    short = disk_check(512 * 1024 * 1024, 1024 * 1024 * 1024)
    assert not short.ok and short.detail.startswith("512.0 MiB free; keeps 1.0 GiB")
    assert "are refused (min_free_disk_mib)" in short.detail
