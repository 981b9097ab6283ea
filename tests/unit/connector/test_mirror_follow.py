"""A reader can follow the consumer's copy by its version (`MirrorVersion`): while the
count of rewrites stays, the rows with ids above the last one it read are exactly what
was added; a correction, a withdrawal or an erased order moves the count. On SQLite and,
when set, PostgreSQL, where deliveries under one agreement hold its mirror row until
they commit, so none adds rows below the ids of one that committed after it began."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine, false, select, text
from sqlalchemy.exc import OperationalError

from qdspace.connector.contract_store import ContractStore, IncomingRow, MirrorVersion
from qdspace.connector.contract_store.received import held_statement
from qdspace.connector.contract_store.received_model import received_row_table
from qdspace.connector.negotiation import Role
from qdspace.connector.retention_sweep import shred_and_sign
from qdspace.connector.spc import SpcSpec
from qdspace.node.console import spc
from qdspace.node.console.spc_state import chart_state
from qdspace.policies.canonical import canonical_json

from . import test_contract_store
from .test_retention import C_KEY, T0, give_agreement

engine = test_contract_store.engine  # the same store on SQLite, and PostgreSQL when set
AGR = "agr-follow"


@pytest.fixture
def store(engine: Engine) -> ContractStore:
    made = ContractStore(engine, b"k" * 32)
    give_agreement(made, AGR, 180, Role.CONSUMER)
    give_agreement(made, "agr-other", 180, Role.CONSUMER)
    return made


@dataclass
class Follower:
    """What the SPC page does with a subscription's rows: read them all once, then only
    those above the last id read while `rewrites` stays; everything again otherwise."""

    store: ContractStore
    rows: list[tuple[int, bytes]] = field(default_factory=list)
    version: MirrorVersion | None = None
    whole_reads: int = 0

    def follow(self) -> None:
        now = self.store.mirror_version(AGR)
        if now == self.version:
            return
        if self.version is not None and now is not None and now.rewrites == self.version.rewrites:
            after = self.rows[-1][0] if self.rows else 0
            self.rows += [(r.id, r.payload) for r in self.store.received_since(AGR, after)]
        else:
            self.rows = [(r.id, r.payload) for r in self.store.received_rows(AGR)]
            self.whole_reads += 1
        self.version = now


def _row(key: str, version: int, order: str, score: float | None) -> bytes:
    if score is None:
        return canonical_json({"@key": key, "@v": version, "@withdrawn": True})
    return canonical_json({"@key": key, "@v": version, "order_id": order, "score": score})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_follower_reading_only_what_is_new_holds_what_is_held(
    store: ContractStore, seed: int
) -> None:
    """Random deliveries (new records, corrections, withdrawals, copies of what is held,
    rows of another agreement between) and erased orders: after each, the follower holds
    exactly the rows a whole read gives, id for id and byte for byte. It fails when a
    rewrite is counted as an addition (the follower keeps a replaced version)."""
    rng = random.Random(seed)
    versions: dict[str, tuple[int, str]] = {}  # key -> (version, order) last sent
    seq = 0
    follower = Follower(store)
    live = ["ORD-1", "ORD-2", "ORD-3", "ORD-4"]  # an erased order's key is gone: no more rows
    erased = 0
    for step in range(60):
        kind = rng.choice(["add", "add", "add", "correct", "withdraw", "copy", "other", "erase"])
        rows: list[IncomingRow] = []
        keys = list(versions)
        if kind == "add" or not keys:
            for _ in range(rng.randint(1, 8)):
                key, order = f"r{len(versions)}-{seed}-{step}", rng.choice(live)
                versions[key] = (1, order)
                rows.append(IncomingRow(seq, order, _row(key, 1, order, rng.random())))
                seq += 1
        elif kind in ("correct", "withdraw", "copy"):
            key = rng.choice(keys)
            version, order = versions[key]
            if kind != "copy":
                version += 1
                versions[key] = (version, order)
            score = None if kind == "withdraw" else rng.random()
            rows.append(IncomingRow(seq, order, _row(key, version, order, score)))
            seq += 1
        elif kind == "other":
            other = [
                IncomingRow(i, "ORD-1", _row(f"o{step}-{i}", 1, "ORD-1", 0.5)) for i in range(3)
            ]
            store.store_received_rows("agr-other", f"tx-other-{step}", other, T0)
        elif len(live) > 1:
            order = live.pop(rng.randrange(len(live)))
            held = sum(1 for v in versions.values() if v[1] == order)
            assert shred_and_sign(store, AGR, order, C_KEY, T0, None) is not None
            erased += held > 0
            versions = {k: v for k, v in versions.items() if v[1] != order}
        if rows:
            store.store_received_rows(AGR, f"tx-{seed}", rows, T0)
        follower.follow()
        whole = [(r.id, r.payload) for r in store.received_rows(AGR)]
        assert follower.rows == whole, (seed, step, kind)
    # most steps were read incrementally: the test exercised the path it is about
    assert follower.whole_reads < 40, follower.whole_reads
    assert erased  # an order with rows in it was erased


def test_the_version_counts_additions_and_rewrites_apart(store: ContractStore) -> None:
    assert store.mirror_version(AGR) is None  # nothing received yet
    first = [IncomingRow(i, "ORD-1", _row(f"k{i}", 1, "ORD-1", i / 10)) for i in range(3)]
    store.store_received_rows(AGR, "tx-1", first, T0)
    assert store.mirror_version(AGR) == MirrorVersion(1, 0)
    store.store_received_rows(AGR, "tx-1", first, T0)  # a copy changes nothing
    assert store.mirror_version(AGR) == MirrorVersion(1, 0)
    store.store_received_rows(AGR, "tx-1", [IncomingRow(3, "ORD-1", _row("k0", 2, "ORD-1", 9))], T0)
    assert store.mirror_version(AGR) == MirrorVersion(2, 1)
    store.store_received_rows(
        AGR, "tx-1", [IncomingRow(4, "ORD-1", _row("k1", 2, "ORD-1", None))], T0
    )
    assert store.mirror_version(AGR) == MirrorVersion(3, 2)
    assert shred_and_sign(store, AGR, "ORD-1", C_KEY, T0, None) is not None
    assert store.mirror_version(AGR) == MirrorVersion(4, 3)
    assert store.received_since(AGR, 0) == []


def test_pages_the_newest_and_what_came_since_are_ranges_of_the_agreements_rows(
    store: ContractStore,
) -> None:
    """Read a page after an id, the newest rows or what came since: each is the slice of
    the agreement's rows (of one order) that reading them all gives, whatever another
    agreement's rows, corrections and withdrawals in between. (Served by the (agreement,
    id) index since 0021; the slices must not move with it.)"""
    rng = random.Random(21)
    seq = 0
    for step in range(12):
        rows = []
        numbers = rng.sample(range(40), rng.randint(3, 9))
        for n in numbers:  # new records and corrections of held ones
            order = f"ORD-{1 + n % 2}"
            rows.append(IncomingRow(seq, order, _row(f"k{n}", step + 1, order, rng.random())))
            seq += 1
        if step % 4 == 3:  # a withdrawal: its record is no longer held
            n = rng.choice(numbers)
            order = f"ORD-{1 + n % 2}"
            rows.append(IncomingRow(seq, order, _row(f"k{n}", step + 50, order, None)))
            seq += 1
        store.store_received_rows(AGR, "tx-pages", rows, T0)
        other = [IncomingRow(step, "ORD-1", _row(f"o{step}", 1, "ORD-1", 0.5))]
        store.store_received_rows("agr-other", "tx-pages-other", other, T0)
    whole = [(r.id, r.order_id, r.payload) for r in store.received_rows(AGR)]
    assert len(whole) > 20 and [w[0] for w in whole] == sorted({w[0] for w in whole})
    ids = [0, whole[0][0], whole[5][0], whole[-2][0], whole[-1][0], whole[-1][0] + 1000]
    for order in (None, "ORD-1", "ORD-2"):
        held = [w for w in whole if order is None or w[1] == order]
        for after in ids:
            for limit in (None, 1, 3, 1000):
                got = store.received_rows(AGR, order, after_id=after, limit=limit)
                want = [w for w in held if w[0] > after][:limit]
                assert [(r.id, r.order_id, r.payload) for r in got] == want, (order, after, limit)
    for after in ids:
        assert [(r.id, r.order_id, r.payload) for r in store.received_since(AGR, after)] == [
            w for w in whole if w[0] > after
        ]
    for count in (1, 7, len(whole), len(whole) + 5):
        newest = store.received_newest(AGR, count)
        assert [(r.id, r.order_id, r.payload) for r in newest] == whole[-count:]
    assert store.count_received(AGR) == len(whole)
    # the driver's rows read as SQLAlchemy's: the same values of the same types (times
    # aware, in UTC), on either database
    table = received_row_table
    with store.engine.connect() as connection:
        found = connection.execute(
            select(table).where(table.c.agreement_id == AGR, table.c.withdrawn == false())
        )
        truth = {row.id: row for row in found}
    for row in store.received_rows(AGR):
        want = truth[row.id]
        read = (row.agreement_id, row.order_id, row.source_id, row.seq, row.record_key, row.version)
        assert read == (
            want.agreement_id,
            want.order_id,
            want.source_id,
            want.seq,
            want.record_key,
            want.version,
        )
        assert row.received_at == want.received_at and row.received_at.tzinfo is not None
        assert [type(v) for v in read] == [str, str, str, int, str, int]


def test_the_agreements_rows_are_read_as_ranges_of_its_index(store: ContractStore) -> None:
    """A page, the newest rows and what came since are read from the agreement's (agreement,
    id) entries, never by finding every row of the agreement and sorting them (what
    SQLite did through the (agreement, key) index: 242 ms for the newest 20,000 of
    200,000 rows held, 63 ms for a page of 1,000)."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans by its statistics; the form is SQLite's")
    for order, newest, limit in itertools.product((False, True), repeat=3):
        read = held_statement(order=order, newest=newest, limit=limit)
        params = [AGR, 5, False] + (["ORD-1"] if order else []) + ([10] if limit else [])
        with store.engine.connect() as connection:
            plan = [
                str(r[-1])
                for r in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {read.sql}", tuple(params))
            ]
        assert "USING INDEX ix_contract_received_row_agreement" in plan[0], (read.sql, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (read.sql, plan)


def test_a_delivery_holds_the_agreements_mirror_row_until_it_commits(store: ContractStore) -> None:
    """Two deliveries under one agreement never write at once (PostgreSQL; SQLite has one
    writer): from the moment the first finds the agreement's number, before it adds a
    row, the second waits for its commit, so the ids it adds come after every id the
    first added, and a reader that saw the first's rows misses none of its own. (Locked
    only where the counts are updated, at the end, the second could take lower ids and
    commit after a reader saw the first's.)"""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises its writers")
    store.store_received_rows(
        AGR, "tx-0", [IncomingRow(0, "ORD-1", _row("k0", 1, "ORD-1", 0.1))], T0
    )
    writer = store._received._writer  # a delivery in a transaction held open
    with store.engine.connect() as first, store.engine.connect() as second:
        with first.begin():
            writer._agreement_no(first, AGR)  # where a delivery begins to write
            with pytest.raises(OperationalError, match="lock"), second.begin():
                second.execute(text("SET LOCAL lock_timeout = '200ms'"))
                later = [IncomingRow(2, "ORD-1", _row("k2", 1, "ORD-1", 0.3))]
                writer.store_rows(second, AGR, "tx-b", later, T0)
            rows = [IncomingRow(1, "ORD-1", _row("k1", 1, "ORD-1", 0.2))]
            writer.store_rows(first, AGR, "tx-a", rows, T0)
        with second.begin():  # the first committed: the second goes through
            writer.store_rows(second, AGR, "tx-b", later, T0)
    held = store.received_rows(AGR)
    assert [r.record_key for r in held] == ["k0", "k1", "k2"]


def _console(store: ContractStore, spec: SpcSpec) -> SimpleNamespace:
    """What the SPC page's stream reads of a node: subscription ``s1`` of ``score``
    under the agreement, and the store."""
    sub = SimpleNamespace(agreement_id=AGR, characteristic="score", spec=spec)
    return SimpleNamespace(
        contract_client=SimpleNamespace(subscriptions={"s1": sub}),
        contracts=SimpleNamespace(store=store),
    )


def test_the_spc_pages_chart_of_a_subscription_is_fed_only_what_was_added(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SPC stream (`console.spc.changed`) over a subscription's agreement: after each
    delivery its event is the chart of every value held (numbers only: ``true`` and text
    skipped, as the subscription's monitor skips them), built here from a whole read;
    the held rows are read again only when the stream starts and after a rewrite."""
    spec = SpcSpec(usl=0.9, baseline_size=8, cpk_window=8)
    ctx = _console(store, spec)
    whole_reads = []
    read_whole, newest = store.received_rows, store.received_newest
    monkeypatch.setattr(store, "received_newest", lambda *a: whole_reads.append(a) or newest(*a))
    seen: dict[str, object] = {}
    charts = spc.KeptCharts()
    # nothing held yet: an empty chart
    (empty,) = spc.changed(ctx, ["sub:s1"], seen, charts=charts)
    assert json.loads(empty.split(b"data: ", 1)[1]) == chart_state("sub:s1", [], spec)
    rng = random.Random(7)
    seq, rewrites = 0, 0
    for step in range(40):
        if step % 9 == 8:  # a correction of a held record
            key = f"k{rng.randrange(seq)}"
            row = canonical_json({"@key": key, "@v": 2 + step, "order_id": "ORD-1", "score": 0.95})
            rows = [IncomingRow(seq, "ORD-1", row)]
            rewrites += 1
        else:
            rows = []
            for _ in range(rng.randint(1, 6)):
                value: object = rng.choice([rng.gauss(0.5, 0.05), True, "n/a", rng.randint(0, 1)])
                record = {"@key": f"k{seq}", "@v": 1, "order_id": "ORD-1", "score": value}
                rows.append(IncomingRow(seq, "ORD-1", canonical_json(record)))
                seq += 1
        store.store_received_rows(AGR, "tx-live", rows, T0)
        (event,) = spc.changed(ctx, ["sub:s1"], seen, charts=charts)
        held = [r.decode()["score"] for r in read_whole(AGR)]
        values = [(float(v), "") for v in held if type(v) in (int, float)]
        assert json.loads(event.split(b"data: ", 1)[1]) == chart_state("sub:s1", values, spec)
        unchanged = list(spc.changed(ctx, ["sub:s1"], seen, charts=charts))
        assert unchanged == []  # nothing sent
    assert len(whole_reads) == 1 + rewrites, whole_reads


def test_a_subscriptions_chart_starts_from_the_newest_rows_held(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened, and redrawn after a rewrite, the chart holds the newest `spc.HISTORY` rows
    held (in the order they arrived), and between those the rows that arrive after."""
    monkeypatch.setattr(spc, "HISTORY", 10)
    spec = SpcSpec(usl=0.9, baseline_size=4, cpk_window=4)
    ctx = _console(store, spec)

    def deliver(first: int, count: int, version: int = 1) -> None:
        rows = [
            IncomingRow(n, "ORD-1", _row(f"k{n}", version, "ORD-1", 0.4 + (n * 37 % 11) / 100))
            for n in range(first, first + count)
        ]
        store.store_received_rows(AGR, "tx-live", rows, T0)

    def state() -> object:
        (event,) = spc.changed(ctx, ["sub:s1"], seen, charts=charts)
        return json.loads(event.split(b"data: ", 1)[1])

    def held(last: int) -> list[tuple[float, str]]:
        return [(float(r.decode()["score"]), "") for r in store.received_rows(AGR)][-last:]

    seen: dict[str, object] = {}
    charts = spc.KeptCharts()
    deliver(0, 30)
    assert state() == chart_state("sub:s1", held(10), spec)
    deliver(30, 5)
    assert state() == chart_state("sub:s1", held(15), spec)
    deliver(3, 1, version=2)  # a correction: redrawn from the newest rows held
    assert state() == chart_state("sub:s1", held(10), spec)
