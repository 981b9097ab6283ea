"""The provider's guards on Pull, through the real runtime and `TransferServicer`, on
SQLite and PostgreSQL (`db_backend`): a gate re-checked while a pull is open, resumes
only at checkpoints the provider can vouch for, and re-reads within the transfer quota."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_errors import TransferCursorError, TransferQuotaError
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.negotiation import Role
from qdspace.connector.offer_choices import chosen_assets
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.transfer import TransferProcess, TransferState, completion_id
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferRequest,
    TransferStart,
)
from qdspace.connector.transfer_wire import Checkpoint, RowBatch
from qdspace.node.errors import WireFormatError
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc import auth, contracts_service
from qdspace.node.rpc.contracts_service import TransferServicer
from qdspace.node.rpc.contracts_transfer_serde import (
    PullRequest,
    pull_request_from_proto,
    pull_request_to_proto,
    transfer_message_from_proto,
    transfer_message_to_proto,
)
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.model import to_agreement
from qdspace.protocols.v1 import transfer_pb2

from ..servicer_doubles import Aborted, AbortingContext, seeded_member

ORDER = "PO-1"
NOW = dt.datetime.now(dt.UTC)


class Provider:
    """A provider runtime ("cellex") on a migrated QDM, a consumer ("sunarc") with an
    agreement on its inspections of one order."""

    def __init__(self, url: str, root: Path, rows: int) -> None:
        self.qdm: QualityStore = open_store(url)
        self.pkey, self.me = seeded_member("cellex", b"p", "supplier")
        self.ckey, self.consumer = seeded_member("sunarc", b"c", "oem")
        assets = {a.asset_id: a for a in chosen_assets(self.me.member_id, {})}
        clock = ContractClock(root / "clock", control=False)
        store = ContractStore(self.qdm.engine, bytes(32))
        self.rt = ContractRuntime(
            self.me, self.pkey, store, self.qdm.engine, clock, bytes(32), assets
        )
        order = {"customer": "sunarc", "supplier": "cellex", "product": "cell", "quantity": 10}
        order |= {"order_id": ORDER, "status": "open", "opened_at": "2026-01-01T00:00:00Z"}
        self.qdm.ingest_rows("order", enumerate([order], 1))
        self.next = 0
        self.add(rows)
        self.agreement_id = self._agree()

    def add(self, n: int) -> None:
        rows = [
            {
                "inspection_id": f"INS-{self.next + i:06d}",
                "station": "EL-1",
                "inspected_at": (NOW - dt.timedelta(days=1, seconds=-i)).isoformat(),
                "verdict": "pass",
                "score": 0.5,
                "model_version": "el-1",
                "order_id": ORDER,
                "batch_id": "CB-1",
            }
            for i in range(n)
        ]
        self.next += n
        self.qdm.ingest_rows("inspection", enumerate(rows, 1))

    def _agree(self) -> str:
        agreement_id = f"agr-{uuid.uuid4().hex[:8]}"
        policy = to_agreement(
            self.rt.assets["inspections"].offer, agreement_id, self.consumer.member_id
        )
        t0 = NOW - dt.timedelta(days=2)
        terms = ContractAgreement(
            agreement_id, f"neg-{agreement_id}", self.me.member_id,
            self.consumer.member_id, "inspections", policy, t0, t0,
        )  # fmt: skip
        signed = countersign(sign_agreement(terms, self.pkey), self.ckey, self.pkey.verify_key)
        self.rt.store.save_agreement(signed, Role.PROVIDER)
        return agreement_id

    def open(self) -> TransferProcess:
        tid = f"tx-{uuid.uuid4().hex[:8]}"
        request = TransferRequest(
            f"{tid}:req", tid, self.consumer.member_id, self.agreement_id, self.me.member_id,
            dt.datetime.now(dt.UTC), "quality-assurance", ORDER, None, "",
        )  # fmt: skip
        return self.rt.transfer_message(self.consumer, request)

    def pull(self, tid: str, resume: Checkpoint, batch_rows: int = 10) -> Iterator[RowBatch]:
        return self.rt.pull(self.consumer, PullRequest(tid, resume, batch_rows), batch_rows)

    def stored(self, tid: str) -> TransferProcess:
        process = self.rt.store.find_transfer(tid)
        assert process is not None
        return process


@pytest.fixture
def provider_at(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Callable[[int], Provider]]:
    with ExitStack() as stack:

        def make(rows: int) -> Provider:
            if db_backend == "sqlite":
                url = f"sqlite:///{tmp_path / 'cellex.db'}"
            else:
                url, _ = stack.enter_context(fresh_pg_schema("pullguard"))
            made = Provider(url, tmp_path, rows)
            stack.callback(made.qdm.engine.dispose)
            return made

        yield make


def _servicer_pull(p: Provider, tid: str, resume: Checkpoint) -> AsyncIterator[bytes]:
    auth._CURRENT_PEER.set(auth.Peer(p.consumer, "ipv4:10.0.0.9:1"))
    wire = pull_request_to_proto(PullRequest(tid, resume, 10)).SerializeToString()
    request = transfer_pb2.PullRequest.FromString(wire)
    return TransferServicer(p.rt, NodeMetrics()).Pull(request, AbortingContext())  # type: ignore[arg-type]


# ---------------------------------------------------------------- F1: the gate re-checked


def test_an_open_pull_stops_releasing_once_the_agreement_is_terminated(
    provider_at: Callable[[int], Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer reads one batch, the agreement is terminated, rows are ingested, and it
    reads on slowly (one batch per re-check interval and more): the stream ends
    PERMISSION_DENIED, as a new Pull would. What still leaves after the termination is
    the bound of `ProviderTransfers.pull` for such a consumer: the batch the servicer had
    read ahead and the one read within the interval after the last check, two batches,
    never a row ingested after it; the stored transfer is not COMPLETED."""
    monkeypatch.setattr(contracts_service, "RECHECK_S", 0.2)
    p = provider_at(40)
    process = p.open()

    async def run() -> tuple[list[bytes], Aborted | None]:
        stream = _servicer_pull(p, process.transfer_id, process.checkpoint)
        first = transfer_pb2.RowBatch.FromString(await anext(stream))
        assert first.row_count == 10 and b"INS-000000" in first.payload
        await asyncio.sleep(0.1)  # the read-ahead batch is read before the termination
        p.rt.terminate(p.agreement_id, "breach")
        p.add(30)  # ingested after it
        after: list[bytes] = []
        try:
            async for wire in stream:
                batch = transfer_pb2.RowBatch.FromString(wire)
                after += batch.payload.split(b"\n") if batch.row_count else []
                await asyncio.sleep(0.3)  # a slow consumer
        except Aborted as exc:
            return after, exc
        return after, None

    after, refused = asyncio.run(run())
    assert len(after) <= 20
    later = [f"INS-{n:06d}".encode() for n in range(40, 70)]
    assert not any(ins in row for row in after for ins in later)
    assert refused is not None and refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert "terminated" in str(refused)
    assert p.stored(process.transfer_id).state is TransferState.STARTED


@pytest.mark.parametrize("recheck_s", [0, 3600])
def test_a_pull_stops_at_the_next_batch_after_a_termination_here(
    provider_at: Callable[[int], Provider], recheck_s: float
) -> None:
    """Rechecking every batch, or every hour: a termination made in this process
    (`ContractStore.terminations`) is seen before the next batch. (The gate was built
    again only every `recheck_s`, so a reader asking as fast as it could got every
    batch read within the second after the termination.)"""
    p = provider_at(40)
    process = p.open()
    batches = p.rt.pull(
        p.consumer,
        PullRequest(process.transfer_id, process.checkpoint, 10),
        10,
        recheck_s=recheck_s,
    )
    assert next(batches).count == 10
    p.rt.terminate(p.agreement_id, "breach")
    with pytest.raises(Exception, match="terminated"):
        next(batches)
    stored = p.stored(process.transfer_id)
    assert stored.state is TransferState.STARTED and stored.offset == 10


# ----------------------------------------------------- F2: resumes the provider vouches for


def _first_batches(p: Provider, n: int) -> tuple[TransferProcess, Checkpoint]:
    process = p.open()
    batches = p.pull(process.transfer_id, process.checkpoint)
    checkpoint = process.checkpoint
    for _ in range(n):
        checkpoint = next(batches).checkpoint
    batches.close()
    return p.stored(process.transfer_id), checkpoint


def test_a_forged_resume_checkpoint_is_refused_and_not_recorded(
    provider_at: Callable[[int], Provider],
) -> None:
    p = provider_at(40)
    stored, _ = _first_batches(p, 3)
    assert stored.offset == 30
    forged = Checkpoint(0, b"\xee" * 32, str(2**63 - 1))
    with pytest.raises(TransferCursorError):
        list(p.pull(stored.transfer_id, forged))
    forged_digest = Checkpoint(0, b"\xee" * 32, "")
    with pytest.raises(TransferCursorError):
        list(p.pull(stored.transfer_id, forged_digest))
    assert p.stored(stored.transfer_id) == stored  # nothing the consumer said was kept


def test_an_honest_resume_behind_the_provider_completes(
    provider_at: Callable[[int], Provider],
) -> None:
    p = provider_at(40)
    stored, consumer_at = _first_batches(p, 2)
    list(p.pull(stored.transfer_id, stored.checkpoint))  # the provider ran ahead
    assert p.stored(stored.transfer_id).state is TransferState.COMPLETED
    rest = list(p.pull(stored.transfer_id, consumer_at))  # the consumer had only two
    assert sum(b.count for b in rest) == 20
    done = p.stored(stored.transfer_id)
    assert done.state is TransferState.COMPLETED and done.final == rest[-1].checkpoint
    assert done.final is not None and done.final.offset == 40


def test_a_resume_before_the_provider_is_not_stored_until_it_passes_it(
    provider_at: Callable[[int], Provider],
) -> None:
    p = provider_at(40)
    stored, consumer_at = _first_batches(p, 1)
    more = p.pull(stored.transfer_id, stored.checkpoint)
    next(more), next(more)
    more.close()
    ahead = p.stored(stored.transfer_id)
    assert ahead.offset == 30
    resumed = p.pull(stored.transfer_id, consumer_at)
    next(resumed)  # re-sends rows 10-20, which had left already
    resumed.close()
    assert p.stored(stored.transfer_id) == ahead  # the provider's own record is kept


@pytest.mark.parametrize("position", ["x" * 300, "1" + "0" * 300, "12a"])
def test_a_bad_position_is_refused_at_decode(position: str) -> None:
    message = transfer_pb2.PullRequest(
        transfer_id="tx-1",
        resume_from=transfer_pb2.Checkpoint(offset=0, digest=b"\0" * 32, position=position),
    )
    with pytest.raises(WireFormatError, match="position"):
        pull_request_from_proto(message)
    start = TransferStart("m", "tx-1", "c", Checkpoint(0, b"\0" * 32), dt.datetime.now(dt.UTC))
    wire = transfer_message_to_proto(start)
    wire.start.checkpoint.position = position
    with pytest.raises(WireFormatError, match="position"):
        transfer_message_from_proto(wire)


def test_a_long_position_never_reaches_the_stored_cursor(
    provider_at: Callable[[int], Provider],
) -> None:
    """Past the decoder (a transport that skipped it): refused before it is stored, on
    PostgreSQL too (no DataError), by Pull and by a TransferStart."""
    p = provider_at(40)
    stored, _ = _first_batches(p, 1)
    long = Checkpoint(0, b"\0" * 32, "0" * 299 + "1")
    with pytest.raises(TransferCursorError):
        list(p.pull(stored.transfer_id, long))
    start = TransferStart(
        f"{stored.transfer_id}:c-x", stored.transfer_id, p.consumer.member_id, long,
        dt.datetime.now(dt.UTC),
    )  # fmt: skip
    with pytest.raises(TransferCursorError):
        p.rt.transfer_message(p.consumer, start)
    with p.qdm.engine.connect() as connection:
        length = connection.execute(
            text("select length(cursor_position) from contract_transfer where transfer_id=:t"),
            {"t": stored.transfer_id},
        ).scalar_one()
    assert length <= 256
    assert p.stored(stored.transfer_id) == stored


# ---------------------------------------------------------- F3: re-reads within the quota


def _acknowledge(p: Provider, tid: str) -> TransferProcess:
    done = p.stored(tid)
    assert done.final is not None
    ack = TransferCompletion(
        completion_id(done, Role.CONSUMER), tid, p.consumer.member_id, done.final,
        dt.datetime.now(dt.UTC),
    )  # fmt: skip
    return p.rt.transfer_message(p.consumer, ack)


def test_re_reads_count_against_the_transfer_quota(
    provider_at: Callable[[int], Provider],
) -> None:
    p = provider_at(40)
    p.rt.transfers_per_hour = 3
    process = p.open()
    list(p.pull(process.transfer_id, process.checkpoint))
    _acknowledge(p, process.transfer_id)
    genesis = Checkpoint.genesis(process.transfer_id)
    for _ in range(2):  # a consumer that lost its copy re-reads, within the quota
        assert sum(b.count for b in p.pull(process.transfer_id, genesis)) == 40
    with pytest.raises(TransferQuotaError, match="transfers_per_member_hour 3"):
        list(p.pull(process.transfer_id, genesis))
    with pytest.raises(TransferQuotaError):  # and the re-reads used up new transfers too
        p.open()


def test_a_rewind_hiding_how_far_back_it_goes_is_a_re_read(
    provider_at: Callable[[int], Provider],
) -> None:
    """A claimed offset just under the provider's with a position near the start re-sends
    nearly everything: counted once it re-sent more than two batches."""
    p = provider_at(60)
    p.rt.transfers_per_hour = 1
    stored, first = _first_batches(p, 1)
    list(p.pull(stored.transfer_id, first))  # the provider reaches the end... almost
    done = p.stored(stored.transfer_id)
    assert done.state is TransferState.COMPLETED
    claim = Checkpoint(59, b"\xee" * 32, first.position)
    with pytest.raises(TransferQuotaError, match="transfers_per_member_hour 1"):
        list(p.pull(stored.transfer_id, claim))


def test_an_honest_resume_is_no_re_read(provider_at: Callable[[int], Provider]) -> None:
    p = provider_at(40)
    p.rt.transfers_per_hour = 1
    stored, consumer_at = _first_batches(p, 1)
    more = p.pull(stored.transfer_id, stored.checkpoint)
    next(more), next(more)
    more.close()  # the provider is two batches ahead
    assert sum(b.count for b in p.pull(stored.transfer_id, consumer_at)) == 30


def test_a_dsp_resume_of_a_completed_pull_is_a_new_address_within_the_quota(
    provider_at: Callable[[int], Provider],
) -> None:
    """A DSP consumer restarted after the provider sent (and completed) its pull, before
    it stored it, asks for a new data address: answered (a TransferStartMessage queued
    for its callback, the transfer left COMPLETED) until it acknowledged the completion,
    each answer counted against ``transfers_per_member_hour`` (each is an outbox row and a
    call to the consumer)."""
    from qdspace.connector.contract_errors import IllegalTransitionError
    from qdspace.connector.contract_store import DspProcess
    from qdspace.node.dsp.edr import DataTokens
    from qdspace.node.dsp.transfer_process import TRANSFER, DspTransferMoves

    p = provider_at(25)
    p.rt.transfers_per_hour = 3
    process = p.open()  # one of the hour's three
    list(p.pull(process.transfer_id, process.checkpoint))
    assert p.stored(process.transfer_id).state is TransferState.COMPLETED
    tid = process.transfer_id
    row = DspProcess(
        TRANSFER, tid, Role.PROVIDER.value, p.consumer.member_id, f"urn:uuid:{uuid.uuid4()}",
        "https://127.0.0.1:9/callback", tid,
    )  # fmt: skip
    moves = DspTransferMoves(p.rt, DataTokens(p.pkey, 300), "https://127.0.0.1:8/dsp")
    starts = "SELECT payload FROM contract_outbox WHERE process_id = :p ORDER BY id"

    def queued() -> list[bytes]:
        with p.qdm.engine.connect() as connection:
            return [bytes(r.payload) for r in connection.execute(text(starts), {"p": tid})]

    for n in (1, 2):
        again = moves.incoming(p.consumer, row, "start", {})
        assert again.state is TransferState.COMPLETED and again == p.stored(tid)
        assert len(queued()) == n and b"dataAddress" in queued()[-1]
    with pytest.raises(TransferQuotaError, match="transfers_per_member_hour 3"):
        moves.incoming(p.consumer, row, "start", {})
    assert len(queued()) == 2  # nothing queued for a refusal

    p.rt.transfers_per_hour = 100
    _acknowledge(p, tid)
    with pytest.raises(IllegalTransitionError, match="acknowledgement"):
        moves.incoming(p.consumer, row, "start", {})
    assert len(queued()) == 2


def test_suspending_and_resuming_in_a_loop_spends_the_transfer_quota(
    provider_at: Callable[[int], Provider],
) -> None:
    """Each suspension and resume is a message the transfer keeps, and nothing bounded how
    often a member sent them (259 rows a second over the wire, up to 1,000 a transfer).
    A transfer's first `FREE_CONTROL_MESSAGES` cost nothing (an honest consumer cut off a
    few times); past them each counts against ``transfers_per_member_hour`` like a
    re-read, and once that is spent the next is refused and nothing more is kept."""
    from qdspace.connector.transfer_messages import TransferSuspension
    from qdspace.node.runtime.contracts_transfer import FREE_CONTROL_MESSAGES

    p = provider_at(400)
    p.rt.transfers_per_hour = 4
    process = p.open()  # one of the hour's four
    tid, refused = process.transfer_id, None
    for i in range(200):
        try:
            pause = TransferSuspension(
                f"{tid}:c-pause-{i}", tid, p.consumer.member_id, "pause", dt.datetime.now(dt.UTC)
            )
            p.rt.transfer_message(p.consumer, pause)
            next(p.pull(tid, p.stored(tid).checkpoint))  # resumed (a TransferStart kept)
        except TransferQuotaError as exc:
            refused = exc
            break
    assert refused is not None and "resumes and suspensions counted" in str(refused)
    held = len(p.stored(tid).seen)
    assert FREE_CONTROL_MESSAGES <= held <= FREE_CONTROL_MESSAGES + 3, held
    pause = TransferSuspension(
        f"{tid}:c-pause-x", tid, p.consumer.member_id, "pause", dt.datetime.now(dt.UTC)
    )
    with contextlib.suppress(TransferQuotaError):  # suspended already: nothing kept
        p.rt.transfer_message(p.consumer, pause)
    with pytest.raises(TransferQuotaError):
        next(p.pull(tid, p.stored(tid).checkpoint))
    assert len(p.stored(tid).seen) == held


def test_a_transfer_is_opened_only_where_there_is_room(
    provider_at: Callable[[int], Provider], tmp_path: Path
) -> None:
    """A new transfer keeps its row and messages here: it is asked of the node's free disk
    (or a tenant's storage quota) first, as a negotiation request is; where the disk is
    down to the floor the node keeps, it is refused and nothing is kept."""
    from qdspace.node.disk_room import DiskRoom
    from qdspace.node.errors import DiskLow

    p = provider_at(10)
    free = shutil.disk_usage(tmp_path).free
    p.rt.received_room = DiskRoom(tmp_path, free + 2**30)
    with pytest.raises(DiskLow, match="a transfer request of sunarc"):
        p.open()
    assert p.rt.store.transfers_opened_by(p.consumer.member_id, NOW - dt.timedelta(hours=1)) == 0
    p.rt.received_room = DiskRoom(tmp_path, 0)
    assert p.open().state is TransferState.STARTED


def test_a_pull_asking_one_row_a_batch_gets_the_fewest_a_batch_holds(
    provider_at: Callable[[int], Provider],
) -> None:
    """Each batch of a fresh pull saves the transfer's position (a transaction): one row
    a batch cost the provider 400 us a row, 33 times a batch of 100. A batch holds at
    least `MIN_BATCH_ROWS` rows (the last what is left), whatever the consumer asks."""
    from qdspace.node.runtime.contracts_transfer import MIN_BATCH_ROWS

    p = provider_at(MIN_BATCH_ROWS * 2 + 3)
    process = p.open()
    counts = [b.count for b in p.pull(process.transfer_id, process.checkpoint, batch_rows=1)]
    assert counts == [MIN_BATCH_ROWS, MIN_BATCH_ROWS, 3]
