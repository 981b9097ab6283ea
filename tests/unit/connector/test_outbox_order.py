"""A process's messages reach their peer in the order they were queued (on SQLite and
PostgreSQL): a message is not due while one queued before it, for the same process and
peer, is still owed (failed and waiting for its retry); once that one is sent or set
aside, the next is due. Other processes, and the same process id at another peer, are
not held. The poll reads the undelivered rows only (`ix_contract_outbox_unsent`), not
every message the node ever sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from qdspace.connector.contract_store import ContractStore, OutboxMessage
from qdspace.connector.contract_store.outbox import _due_statement

KEK = bytes(32)
T0 = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
SUNARC = "sunarc-0123456789ab"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _ids(store: ContractStore, now: datetime) -> list[str]:
    return [m.message.message_id for m in store.due_messages(now)]


def test_a_process_message_waits_for_the_one_before_it(contract_engine: Engine) -> None:
    store = ContractStore(contract_engine, KEK)
    store.enqueue(
        [
            OutboxMessage(SUNARC, "dsp", "t-1", "t-1:start", b"1"),
            OutboxMessage(SUNARC, "dsp", "t-2", "t-2:start", b"2"),
            OutboxMessage(SUNARC, "dsp", "t-1", "t-1:resume", b"3"),
            OutboxMessage("voltis", "dsp", "t-1", "t-1:start@voltis", b"4"),
        ],
        T0,
    )
    # the first of each process is due; t-1's resume waits behind its start
    assert _ids(store, at(0)) == ["t-1:start", "t-2:start", "t-1:start@voltis"]

    first = store.due_messages(at(0))[0]
    store.outbox.mark_failed(first.id, "ConnectError", at(30))
    # t-1's start waits for its retry: its resume is not due before it, the others are
    assert _ids(store, at(1)) == ["t-2:start", "t-1:start@voltis"]
    assert _ids(store, at(30)) == ["t-1:start", "t-2:start", "t-1:start@voltis"]

    store.outbox.mark_sent(first.id, at(30))
    assert _ids(store, at(30)) == ["t-2:start", "t-1:resume", "t-1:start@voltis"]


def test_a_message_set_aside_holds_nothing_back(contract_engine: Engine) -> None:
    store = ContractStore(contract_engine, KEK)
    store.enqueue(
        [
            OutboxMessage(SUNARC, "dsp", "n-1", "n-1:offer", b"1"),
            OutboxMessage(SUNARC, "dsp", "n-1", "n-1:termination", b"2"),
        ],
        T0,
    )
    (offer,) = store.due_messages(at(0))
    store.outbox.mark_failed(offer.id, "HTTP 404", at(5), refused=True)
    assert _ids(store, at(10)) == ["n-1:offer"]
    store.outbox.set_aside(offer.id, "HTTP 404 (again)", at(10))
    assert _ids(store, at(10)) == ["n-1:termination"]


def test_the_poll_reads_the_undelivered_messages_only(contract_engine: Engine) -> None:
    """The query plan of the poll: by the partial index of undelivered rows, and each
    message's earlier ones of its process by the other (SQLite's plan; PostgreSQL picks
    by its statistics)."""
    if contract_engine.dialect.name != "sqlite":
        return
    sql = str(_due_statement(100, False).compile(contract_engine))
    with contract_engine.connect() as connection:
        plan = " | ".join(
            str(row[-1])
            for row in connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}", ("2026-12-06", 100, 0)
            )
        )
    assert "USING INDEX ix_contract_outbox_unsent" in plan, plan
    assert "USING INDEX ix_contract_outbox_unsent_process" in plan, plan
    assert "SCAN contract_outbox |" not in plan + " |", plan


def test_delivered_messages_are_pruned_after_their_keep_and_nothing_else(
    contract_engine: Engine,
) -> None:
    """A node kept every message it ever sent (each answer a member's requests made stayed
    forever). `prune_sent` deletes what was delivered before the cutoff, a chunk at a
    time, oldest first; what is owed, set aside, or delivered since stays, and queueing a
    message still kept again sends nothing twice."""
    store = ContractStore(contract_engine, KEK)
    store.enqueue(
        [OutboxMessage(SUNARC, "dsp", f"t-{i}", f"t-{i}:start", b"x") for i in range(5)], T0
    )
    due = store.due_messages(at(0))
    for i, message in enumerate(due[:3]):  # three delivered, at 0, 10 and 20 s
        store.outbox.mark_sent(message.id, at(10 * i))
    store.outbox.set_aside(due[3].id, "refused", at(5))
    assert store.outbox.prune_sent(at(15), limit=1) == 1  # the oldest delivered
    assert store.outbox.prune_sent(at(15)) == 1
    assert store.outbox.prune_sent(at(15)) == 0
    store.enqueue([OutboxMessage(SUNARC, "dsp", "t-2", "t-2:start", b"x")], at(30))
    assert _ids(store, at(100)) == ["t-4:start"]  # t-2's delivery is kept: not sent again
    assert store.outbox.backlog() == 2  # the owed one and the one set aside
    assert store.outbox.queued_for(SUNARC, "t-2") == (0, 1)
