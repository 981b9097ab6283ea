"""The outbox sets aside a message its peer keeps refusing (on SQLite and PostgreSQL):
refusals in a row are counted, any other failure starts the count over, a message set
aside is no longer due, is listed apart in `owed` with its refusal, still counts as not
delivered (a tenant about to be removed owes it), and is queued again only by
`retry_refused`, for its own peer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from qdspace.connector.contract_store import ContractStore, OutboxMessage

KEK = bytes(32)
T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_refusals_set_a_message_aside_until_the_operator_queues_it_again(
    contract_engine: Engine,
) -> None:
    store = ContractStore(contract_engine, KEK)
    outbox = store.outbox
    store.enqueue(
        [
            OutboxMessage("sunarc-0123456789ab", "dsp", "p-1", "m-1", b"1"),
            OutboxMessage("sunarc-0123456789ab", "dsp", "p-2", "m-2", b"2"),
            OutboxMessage("voltis", "notification", "n-1", "n-1", b"3"),
        ],
        T0,
    )
    first, second, voltis = store.due_messages(at(0))
    assert (first.refusals, second.refusals) == (0, 0)

    outbox.mark_failed(first.id, "HTTP 404: no transfer p-1 here", at(1), refused=True)
    outbox.mark_failed(second.id, "ConnectError", at(1))
    (again, *_) = [m for m in store.due_messages(at(1)) if m.id == first.id]
    assert again.refusals == 1 and again.attempts == 1
    outbox.mark_failed(first.id, "UNAVAILABLE", at(2))  # not a refusal: starts over
    (again,) = [m for m in store.due_messages(at(2)) if m.id == first.id]
    assert again.refusals == 0 and again.attempts == 2

    outbox.mark_failed(first.id, "HTTP 404: no transfer p-1 here", at(3), refused=True)
    outbox.set_aside(first.id, "HTTP 404: no transfer p-1 here (again)", at(3))
    due = store.due_messages(at(10_000))
    assert first.id not in [m.id for m in due]  # no longer tried
    assert {m.id for m in due} == {second.id, voltis.id}
    assert outbox.backlog() == 3  # still not delivered

    owed = {b.peer_id: b for b in outbox.owed()}
    sunarc = owed["sunarc-0123456789ab"]
    assert (sunarc.undelivered, sunarc.refused) == (1, 1)
    assert sunarc.last_error == "ConnectError"
    assert sunarc.refused_error == "HTTP 404: no transfer p-1 here (again)"
    assert (owed["voltis"].undelivered, owed["voltis"].refused) == (1, 0)

    store.mark_sent(second.id, at(20))  # every message still tried is delivered
    (sunarc,) = [b for b in outbox.owed() if b.peer_id == "sunarc-0123456789ab"]
    assert (sunarc.undelivered, sunarc.refused) == (0, 1)
    assert sunarc.next_attempt_at is None and sunarc.oldest_queued_at is None

    assert outbox.retry_refused("voltis", at(30)) == 0  # another peer's stay aside
    assert outbox.retry_refused("sunarc-0123456789ab", at(30)) == 1
    (back,) = [m for m in store.due_messages(at(30)) if m.id == first.id]
    assert back.refusals == 0 and back.attempts == 4  # the attempts it took are kept
    assert outbox.retry_refused("sunarc-0123456789ab", at(31)) == 0  # nothing left aside
