"""The transfer-process machine: states, chained checkpoints, resume without loss or duplicates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.connector.contract_errors import (
    IllegalTransitionError,
    MessageReplayError,
    TransferCursorError,
    TransferHistoryFull,
    TransferIntegrityError,
    UnauthorizedSenderError,
    UnknownProcessError,
)
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import (
    MAX_MESSAGES,
    TransferProcess,
    TransferState,
    advance,
    apply,
    open_transfer,
    reread,
    verify_checkpoint,
)
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
)
from qdspace.connector.transfer_wire import Checkpoint, row_bytes

T0 = datetime(2026, 5, 1, tzinfo=UTC)
S = TransferState
ROWS = [{"inspection_id": f"i{n}", "verdict": "ok" if n % 3 else "defect"} for n in range(10)]
DATA = [row_bytes(row) for row in ROWS]


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


REQUEST = TransferRequest("m1", "tx-1", "sunarc", "agr-1", "cellex", T0)


def started(role: Role) -> TransferProcess:
    process = open_transfer(REQUEST, role)
    start = TransferStart("m2", "tx-1", "cellex", Checkpoint.genesis("tx-1"), at(1))
    return apply(process, start)


def test_rows_flow_and_both_sides_complete_on_the_same_checkpoint() -> None:
    provider, consumer = started(Role.PROVIDER), started(Role.CONSUMER)
    assert provider.state is S.STARTED and provider.offset == 0
    for batch in (DATA[:4], DATA[4:]):
        position = f"pos-{len(batch)}"
        provider = advance(provider, batch, position)
        verify_checkpoint(advance(consumer, batch, position), provider.checkpoint)
        consumer = advance(consumer, batch, position)
    done = TransferCompletion("m3", "tx-1", "cellex", provider.checkpoint, at(2))
    provider, consumer = apply(provider, done), apply(consumer, done)
    assert provider.state is consumer.state is S.COMPLETED
    chained = Checkpoint.genesis("tx-1").extend(DATA[:4]).extend(DATA[4:], "pos-6")
    assert consumer.final == chained
    # The chain covers batches: the same rows cut into other batches chain otherwise.
    assert consumer.final != Checkpoint.genesis("tx-1").extend(DATA, "pos-6")
    ack = TransferCompletion("m4", "tx-1", "sunarc", consumer.checkpoint, at(3))
    assert apply(provider, ack).state is S.COMPLETED


def test_a_changed_or_missing_row_breaks_the_chain() -> None:
    provider, consumer = started(Role.PROVIDER), started(Role.CONSUMER)
    provider = advance(provider, DATA)
    tampered = [*DATA[:3], row_bytes({**ROWS[3], "verdict": "ok!"}), *DATA[4:]]
    with pytest.raises(TransferIntegrityError, match="differs"):
        verify_checkpoint(advance(consumer, tampered), provider.checkpoint)
    with pytest.raises(TransferCursorError, match="offset 10"):
        verify_checkpoint(advance(consumer, DATA[:9]), provider.checkpoint)
    # Completion on a checkpoint the consumer does not share is refused.
    done = TransferCompletion("m3", "tx-1", "cellex", provider.checkpoint, at(2))
    with pytest.raises(TransferCursorError):
        apply(consumer, done)


def test_resume_after_a_broken_stream_continues_exactly_where_the_consumer_stopped() -> None:
    provider, consumer = started(Role.PROVIDER), started(Role.CONSUMER)
    provider = advance(provider, DATA[:7], "7")  # sent 7, but the consumer committed only 5
    consumer = advance(consumer, DATA[:5], "5")
    suspend = TransferSuspension("m3", "tx-1", "sunarc", "connection lost", at(2))
    provider, consumer = apply(provider, suspend), apply(consumer, suspend)
    assert consumer.state is S.SUSPENDED and consumer.reason == "connection lost"
    resume = TransferStart("m4", "tx-1", "sunarc", consumer.checkpoint, at(3))
    provider, consumer = apply(provider, resume), apply(consumer, resume)
    assert provider.checkpoint == consumer.checkpoint  # the provider rewound to offset 5
    assert provider.checkpoint.position == "5"
    provider = advance(provider, DATA[5:], "10")
    consumer = advance(consumer, DATA[5:], "10")
    assert consumer.checkpoint == Checkpoint.genesis("tx-1").extend(DATA[:5]).extend(DATA[5:], "10")
    # A start ahead of the consumer, or on another chain, is refused by the consumer.
    ahead = TransferStart("m5", "tx-1", "cellex", provider.checkpoint.extend(DATA[:1]), at(4))
    with pytest.raises(TransferCursorError):
        apply(consumer, ahead)
    other = Checkpoint(consumer.offset, b"\1" * 32, "10")
    with pytest.raises(TransferIntegrityError):
        apply(consumer, replace(ahead, checkpoint=other))
    # A provider never skips ahead of what it sent.
    with pytest.raises(TransferCursorError):
        apply(provider, ahead)


def test_idempotent_messages_and_refusals() -> None:
    process = started(Role.CONSUMER)
    suspend = TransferSuspension("m3", "tx-1", "sunarc", "pause", at(2))
    once = apply(process, suspend)
    assert apply(once, suspend) == once
    with pytest.raises(MessageReplayError):
        apply(once, replace(suspend, reason="other"))
    with pytest.raises(UnknownProcessError):
        apply(once, replace(suspend, message_id="m9", transfer_id="tx-2"))
    with pytest.raises(UnauthorizedSenderError, match="not a party"):
        apply(once, replace(suspend, message_id="m9", sender_id="polycell"))
    # an outsider re-using a message id the parties used is refused as any outsider: a
    # MessageReplayError told it which ids they used
    for used in ("m1", "m2", "m3"):
        with pytest.raises(UnauthorizedSenderError, match="not a party"):
            apply(once, replace(suspend, message_id=used, sender_id="polycell", reason="x"))
    fresh = open_transfer(REQUEST, Role.PROVIDER)
    with pytest.raises(UnauthorizedSenderError, match="only the provider"):
        apply(fresh, TransferStart("m2", "tx-1", "sunarc", Checkpoint.genesis("tx-1"), at(1)))
    with pytest.raises(IllegalTransitionError, match="REQUESTED"):
        apply(fresh, TransferSuspension("m2", "tx-1", "sunarc", "x", at(1)))
    with pytest.raises(IllegalTransitionError, match="moving the cursor"):
        advance(once, DATA)
    with pytest.raises(UnauthorizedSenderError):
        apply(
            started(Role.PROVIDER),
            TransferCompletion("m3", "tx-1", "sunarc", Checkpoint.genesis("tx-1"), at(2)),
        )


def test_termination_is_final() -> None:
    process = started(Role.PROVIDER)
    end = TransferTermination("m3", "tx-1", "sunarc", "agreement terminated", at(2))
    ended = apply(process, end)
    assert ended.state is S.TERMINATED
    again = apply(ended, replace(end, message_id="m4", reason="again"))
    assert again.state is S.TERMINATED and again.reason == "agreement terminated"
    for message in (
        TransferStart("m5", "tx-1", "cellex", Checkpoint.genesis("tx-1"), at(3)),
        TransferSuspension("m5", "tx-1", "cellex", "x", at(3)),
        TransferCompletion("m5", "tx-1", "cellex", ended.checkpoint, at(3)),
    ):
        with pytest.raises(IllegalTransitionError, match="TERMINATED"):
            apply(ended, message)


def test_checkpoint_refuses_nonsense() -> None:
    with pytest.raises(TransferCursorError):
        Checkpoint(-1, b"\0" * 32)
    with pytest.raises(TransferCursorError):
        Checkpoint(0, b"short")


@settings(max_examples=80)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=6))
def test_any_pattern_of_breaks_delivers_every_row_exactly_once(breaks: list[int]) -> None:
    """The provider sends batches of 2; the consumer commits some of each attempt's
    batches, then resumes; the result is exact and both chains agree."""
    provider, consumer = started(Role.PROVIDER), started(Role.CONSUMER)
    received: list[bytes] = []
    batches: list[list[bytes]] = []
    for attempt, committed in enumerate(breaks):
        if consumer.state is S.SUSPENDED:
            resume = TransferStart(f"r{attempt}", "tx-1", "sunarc", consumer.checkpoint, at(9))
            provider, consumer = apply(provider, resume), apply(consumer, resume)
        start = provider.offset
        sent = [DATA[i : i + 2] for i in range(start, len(DATA), 2)]
        for batch in sent:
            provider = advance(provider, batch, str(provider.offset + len(batch)))
        for batch in sent[:committed]:
            consumer = advance(consumer, batch, str(consumer.offset + len(batch)))
            received.extend(batch)
            batches.append(batch)
        if consumer.offset < len(DATA):
            pause = TransferSuspension(f"s{attempt}", "tx-1", "sunarc", "broken", at(9))
            provider, consumer = apply(provider, pause), apply(consumer, pause)
    if consumer.state is S.SUSPENDED:
        resume = TransferStart("r-last", "tx-1", "sunarc", consumer.checkpoint, at(9))
        provider, consumer = apply(provider, resume), apply(consumer, resume)
        rest = DATA[consumer.offset :]
        assert provider.checkpoint == consumer.checkpoint
        provider = advance(provider, rest, str(len(DATA)))
        consumer = advance(consumer, rest, str(len(DATA)))
        received.extend(rest)
        batches.append(rest)
    assert received == DATA
    expected = Checkpoint.genesis("tx-1")
    for batch in batches:
        expected = expected.extend(batch, str(expected.offset + len(batch)))
    assert consumer.checkpoint == expected


def test_a_batch_payload_must_hold_exactly_its_rows() -> None:
    genesis = Checkpoint.genesis("tx-1")
    with pytest.raises(TransferIntegrityError, match="raw newline"):
        genesis.extend([DATA[0], b"x\ny"])
    with pytest.raises(TransferIntegrityError, match="claims 3 rows"):
        genesis.extend_payload(b"a\nb", 3)
    with pytest.raises(TransferIntegrityError, match="empty payload"):
        genesis.extend_payload(b"a", 0)
    assert genesis.extend([], "7") == Checkpoint(0, genesis.digest, "7")
    assert genesis.extend(DATA[:2]) == genesis.extend_payload(b"\n".join(DATA[:2]), 2)


def test_an_incremental_transfer_starts_at_its_watermark() -> None:
    from qdspace.connector.transfer_messages import fingerprint

    since = replace(REQUEST, since="4711")
    provider, consumer = open_transfer(since, Role.PROVIDER), open_transfer(since, Role.CONSUMER)
    assert provider.checkpoint == consumer.checkpoint
    assert provider.checkpoint.position == "4711" and provider.checkpoint.offset == 0
    assert provider.checkpoint.digest == Checkpoint.genesis("tx-1").digest
    assert fingerprint(since) != fingerprint(REQUEST)
    with pytest.raises(TransferCursorError, match="watermark"):
        open_transfer(replace(REQUEST, since="-1; DROP"), Role.PROVIDER)


def test_a_row_envelope_names_its_record_version_and_tombstone() -> None:
    from qdspace.connector.contract_errors import RecordEnvelopeError
    from qdspace.connector.transfer_wire import RecordMeta, record_meta, row_bytes, tombstone_bytes

    assert record_meta(row_bytes({"@key": "k", "@v": 3, "verdict": "ok"})) == RecordMeta("k", 3)
    assert record_meta(tombstone_bytes("k", 4)) == RecordMeta("k", 4, True)
    for bad in (
        b"[1]",
        b"not json",
        row_bytes({"@v": 1}),
        row_bytes({"@key": "", "@v": 1}),
        row_bytes({"@key": "k" * 129, "@v": 1}),
        row_bytes({"@key": "k", "@v": 0}),
        row_bytes({"@key": "k", "@v": True}),
        row_bytes({"@key": "k", "@v": 1, "@withdrawn": False}),
        row_bytes({"@key": "k", "@v": 1, "@withdrawn": True, "verdict": "ok"}),
    ):
        with pytest.raises(RecordEnvelopeError):
            record_meta(bad)


def test_a_process_keeps_at_most_max_messages() -> None:
    """A consumer resuming one transfer over and over (each resume a message the provider
    keeps) reaches `MAX_MESSAGES`: then only its termination is taken, once; a retried
    message it holds is still answered; a re-read that would complete a new chain is
    refused before any row is sent."""
    process = started(Role.PROVIDER)
    genesis = Checkpoint.genesis("tx-1")
    n = len(process.seen)
    while n < MAX_MESSAGES:
        process = apply(process, TransferStart(f"r{n}", "tx-1", "sunarc", genesis, at(n)))
        n += 1
    assert len(process.seen) == MAX_MESSAGES
    last = TransferStart(f"r{n - 1}", "tx-1", "sunarc", genesis, at(n - 1))
    assert apply(process, last) == process  # a retry: nothing new kept
    with pytest.raises(TransferHistoryFull, match=f"holds {MAX_MESSAGES} messages"):
        apply(process, TransferStart("one-more", "tx-1", "sunarc", genesis, at(n)))
    with pytest.raises(TransferHistoryFull):
        apply(process, TransferSuspension("pause", "tx-1", "sunarc", "pause", at(n)))
    ended = apply(process, TransferTermination("end", "tx-1", "cellex", "enough", at(n)))
    assert ended.state is S.TERMINATED and len(ended.seen) == MAX_MESSAGES + 1
    assert apply(ended, TransferTermination("end-2", "tx-1", "sunarc", "again", at(n))) == ended

    done = apply(
        advance(started(Role.PROVIDER), DATA),
        TransferCompletion("c", "tx-1", "cellex", genesis.extend(DATA), at(2)),
    )
    full = replace(done, seen=(*done.seen, *((f"x{i}", "f") for i in range(MAX_MESSAGES))))
    with pytest.raises(TransferHistoryFull):
        reread(full, genesis)  # the new chain's completion would be one more
    assert reread(done, genesis)[1]  # under the cap: re-read and completed again


def test_suspending_a_suspended_or_ending_an_ended_transfer_keeps_nothing() -> None:
    """Each was another message the transfer kept (a member suspending its transfers in
    a loop added a row a call): the transfer is so already, and nothing is kept."""
    suspended = apply(
        started(Role.PROVIDER), TransferSuspension("s1", "tx-1", "sunarc", "pause", at(1))
    )
    assert suspended.state is S.SUSPENDED
    again = TransferSuspension("s2", "tx-1", "sunarc", "pause again", at(2))
    assert apply(suspended, again) == suspended
    ended = apply(suspended, TransferTermination("t1", "tx-1", "sunarc", "done", at(3)))
    assert apply(ended, TransferTermination("t2", "tx-1", "cellex", "done", at(4))) == ended
    assert len(ended.seen) == len(suspended.seen) + 1
