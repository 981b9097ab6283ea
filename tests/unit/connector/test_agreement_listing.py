"""A node's agreements at scale: listings filtered and paged in SQL as the whole list
would be, the overview's counts made in SQL, the indexes they search, and an older store
migrated (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, create_engine, select

from qdspace.connector.agreement import (
    ContractAgreement,
    DeletionReceipt,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_store import (
    ContractStore,
    DutyReport,
    OrderClosure,
    StoredAgreement,
)
from qdspace.connector.contract_store.agreements import agreement_table
from qdspace.connector.negotiation import Role
from qdspace.connector.storage import migrate
from qdspace.policies.evaluate import order_in_scope
from qdspace.policies.model import OfferTerms, make_offer, to_agreement
from qdspace.policies.retention import DutyStatus, deletion_duty, duty_status

from .test_retention import give_agreement_before_0019

KEK = b"k" * 32
T0 = datetime(2026, 6, 1, tzinfo=UTC)
MEMBERS = ("oem", "cellex", "sunarc", "polycell")
ASSETS = ("inspections", "traceability", "model-updates")
ORDERS = ("PO-1", "PO-2", "PO-3", "PO-4")
KEYS = {m: SigningKey(bytes([i + 1]) * 32) for i, m in enumerate(MEMBERS)}


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, KEK)


def _agreement(rnd: random.Random, n: int, order: str | None = None) -> tuple[object, Role]:
    """A random agreement: an order scope of one order (``order``, else drawn), several
    or none, a delete duty with or without a receipt or no duty at all."""
    provider, consumer = rnd.sample(MEMBERS, 2)
    asset = rnd.choice(ASSETS)
    scope = rnd.choice([None, frozenset(rnd.sample(ORDERS, 2)), frozenset({rnd.choice(ORDERS)})])
    terms = OfferTerms(
        purposes=frozenset({"qa"}),
        orders=frozenset({order}) if order is not None else scope,
        retention_days=rnd.choice([30, 180]),
        receipt=rnd.random() < 0.7,
    )
    offer = make_offer(f"offer-{n}", provider, asset, terms)
    if rnd.random() < 0.15:  # no delete duty
        offer = replace(offer, permissions=tuple(replace(p, duties=()) for p in offer.permissions))
    at = T0 + timedelta(seconds=rnd.randrange(40))  # equal times happen: ids break ties
    agreement = ContractAgreement(
        f"agr-{n:04d}", f"neg-{n}", provider, consumer, asset,
        to_agreement(offer, f"agr-{n:04d}", consumer), at, at,
    )  # fmt: skip
    signed = sign_agreement(agreement, KEYS[provider])
    if rnd.random() < 0.8:
        signed = countersign(signed, KEYS[consumer], KEYS[provider].verify_key)
    return signed, rnd.choice(list(Role))


def _fill(store: ContractStore, count: int, seed: int) -> list[StoredAgreement]:
    rnd = random.Random(seed)
    for n in range(count):
        signed, role = _agreement(rnd, n)
        store.save_agreement(signed, role)  # type: ignore[arg-type]
    ids = [f"agr-{n:04d}" for n in range(count)]
    for agreement_id in rnd.sample(ids, count // 5):
        store.terminate_agreement(agreement_id, "ended", T0 + timedelta(days=1))
    return [store.agreement(i) for i in ids]


def _agreed(held: StoredAgreement) -> tuple[datetime, str]:
    return held.signed.agreement.agreed_at, held.agreement_id


def _ids(found: list[StoredAgreement]) -> list[str]:
    return [a.agreement_id for a in found]


@pytest.mark.parametrize("seed", [1, 2])
def test_listings_filter_and_page_as_the_whole_list_does(store: ContractStore, seed: int) -> None:
    """Over 120 random agreements (both roles, some not countersigned, some terminated,
    equal times): every filter and page is the list every agreement read one by one
    gives, filtered and sorted in Python; pages never overlap and make up the whole."""
    every = sorted(_fill(store, 120, seed), key=_agreed)
    assert store.agreements() == every
    assert store.count_agreements() == 120
    for role in Role:
        held = [a for a in every if a.role is role]
        assert store.agreements(role) == held
        assert store.count_agreements(role) == len(held)
        for asset in ASSETS:
            for member in MEMBERS:
                found = store.agreements(role, asset_id=asset, consumer_id=member)
                terms = [a.signed.agreement for a in held]
                want = [
                    a.agreement_id
                    for a, t in zip(held, terms, strict=True)
                    if t.asset_id == asset and t.consumer_id == member
                ]
                assert _ids(found) == want
                by_provider = store.agreements(role, asset_id=asset, provider_id=member)
                assert _ids(by_provider) == [
                    a.agreement_id
                    for a, t in zip(held, terms, strict=True)
                    if t.asset_id == asset and t.provider_id == member
                ]
    newest = store.agreements(newest_first=True)
    assert newest == every[::-1]
    pages = [store.agreements(limit=17, offset=o, newest_first=True) for o in range(0, 120, 17)]
    assert [a for page in pages for a in page] == every[::-1]
    assert store.agreements(limit=5, offset=118) == every[118:]


def test_the_overview_counts_are_the_agreements_counted_one_by_one(store: ContractStore) -> None:
    every = _fill(store, 90, 3)
    want: dict[tuple[str, str], list[int]] = {}
    for held in every:
        terms = held.signed.agreement
        counts = want.setdefault((terms.provider_id, terms.consumer_id), [0, 0])
        counts[0] += 1
        counts[1] += int(held.active)
    links = store.agreement_links()
    assert {(k.provider_id, k.consumer_id): [k.total, k.active] for k in links} == want
    assert sum(k.active for k in links) == sum(a.active for a in every) > 0
    assert sum(k.active for k in links) < 90  # terminated and unsigned ones are not active


@pytest.mark.parametrize("seed", [6, 7])
def test_an_order_closure_concerns_the_agreements_reading_every_one_would_find(
    store: ContractStore, seed: int
) -> None:
    """The agreements an order's closure concerns, read by the order the scope names (and
    those naming none), are the ones every agreement read and checked would give; the
    duties reported from the rows are the ones every agreement parsed gives."""
    every = _fill(store, 100, seed)
    for provider in MEMBERS:
        for order in (*ORDERS, "PO-elsewhere"):
            want = [
                a.agreement_id
                for a in sorted(every, key=_agreed)
                if a.role is Role.PROVIDER
                and a.signed.agreement.provider_id == provider
                and a.signed.complete
                and order_in_scope(a.signed.agreement.policy, order)
            ]
            found = store.concerning_order(provider, order)
            assert [
                a.agreement_id for a in found if order_in_scope(a.signed.agreement.policy, order)
            ] == want
            assert len(found) < len(every)  # not every agreement read
    given = [a for a in sorted(every, key=_agreed) if a.role is Role.PROVIDER]
    parsed = [
        (a.agreement_id, d.provider_id, d.consumer_id, d.retention_days, d.receipt_required)
        for a in given
        if (d := deletion_duty(a.signed.agreement.policy, None)) is not None
    ]
    kept = [  # the duties of agreements none of whose orders closed: one each, from rows
        (d.agreement_id, d.provider_id, d.consumer_id, d.retention_days, d.receipt_required)
        for d in (report.duty for report in store.deletion_duties(T0))
    ]
    assert kept == parsed and len(parsed) < len(given)  # some have no duty


def _plan(engine: Engine, query: object) -> list[str]:
    sql = query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            return [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}")]


def test_a_page_and_an_assets_agreements_are_read_by_index(
    store: ContractStore, contract_engine: Engine
) -> None:
    """The console's newest 50, a federation member's agreements for an asset and an
    order closure's candidates search an index; none reads every agreement (a sort of
    them all for a page)."""
    _fill(store, 30, 4)
    table = agreement_table
    newest = (
        select(table.c.agreement_id)
        .order_by(table.c.agreed_at.desc(), table.c.agreement_id.desc())
        .limit(50)
    )
    asset = select(table.c.agreement_id).where(
        table.c.role == "provider",
        table.c.asset_id == "model-updates",
        table.c.consumer_id == "cellex",
    )
    order = select(table.c.agreement_id).where(
        table.c.scope_order == "PO-1", table.c.role == "provider", table.c.provider_id == "oem"
    )
    for name, query, index in (
        ("newest", newest, "ix_contract_agreement_agreed"),
        ("asset", asset, "ix_contract_agreement_asset"),
        ("order", order, "ix_contract_agreement_order"),
    ):
        plan = _plan(contract_engine, query)
        assert any(index in step for step in plan), (name, plan)
        assert not [s for s in plan if "TEMP B-TREE" in s or "Seq Scan" in s], (name, plan)


def test_agreements_stored_before_0019_are_listed_and_read_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """Agreements a node stored at 0018 (rows without the derived columns) get their scope
    order and duty from their terms at the upgrade, and are listed, found by order and
    reported as if stored now."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0018_transfer_pull_key")
    rnd = random.Random(5)
    made = []
    with engine.begin() as conn:
        for n in range(12):
            signed, role = _agreement(rnd, n, order=rnd.choice(ORDERS))
            made.append((signed, role))
            give_agreement_before_0019(conn, signed, role)  # type: ignore[arg-type]
    migrate(engine)
    upgraded = ContractStore(engine, KEK)
    every = sorted(upgraded.agreements(), key=_agreed)
    assert len(every) == 12 and upgraded.agreements(limit=3, newest_first=True) == every[::-1][:3]
    fresh_engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(fresh_engine)
    fresh = ContractStore(fresh_engine, KEK)
    for signed, role in made:
        fresh.save_agreement(signed, role)  # type: ignore[arg-type]
    assert upgraded.deletion_duties(T0) == fresh.deletion_duties(T0) != []
    for provider in MEMBERS:
        for order in (*ORDERS, "PO-none"):
            assert _ids(upgraded.concerning_order(provider, order)) == _ids(
                fresh.concerning_order(provider, order)
            )
    with engine.connect() as conn:
        names = {r[1] for r in conn.exec_driver_sql("PRAGMA index_list(contract_agreement)")}
    assert {"ix_contract_agreement_agreed", "ix_contract_agreement_order"} <= names
    engine.dispose()
    fresh_engine.dispose()


def _old_deletion_duties(store: ContractStore, now: datetime) -> list[DutyReport]:
    """The deletion duties as they were made before their rows kept the duty: every
    agreement given parsed, every receipt matched against each."""
    receipts = {(s.receipt.agreement_id, s.receipt.order_id): s.receipt for s in store.receipts()}
    closures: dict[str, list[OrderClosure]] = {}
    for closure in store.closures():
        closures.setdefault(closure.agreement_id, []).append(closure)
    reports = []
    for stored in store.agreements(Role.PROVIDER):
        closed: dict[str, datetime | None] = {
            c.order_id: c.closed_at for c in closures.get(stored.agreement_id, [])
        }
        for agreement_id, order_id in receipts:
            if agreement_id == stored.agreement_id:
                closed.setdefault(order_id, None)
        for order_id, closed_at in sorted(closed.items()) or [("", None)]:
            duty = deletion_duty(stored.signed.agreement.policy, closed_at, order_id)
            if duty is None:
                continue
            receipt = receipts.get((stored.agreement_id, order_id))
            deleted_at = None if receipt is None else receipt.deleted_at
            reports.append(DutyReport(duty, duty_status(duty, now, deleted_at), receipt))
    return reports


@pytest.mark.parametrize("seed", [8, 9])
def test_receipts_page_and_duties_are_what_reading_everything_gave(
    store: ContractStore, seed: int
) -> None:
    """Orders closed and receipts recorded at random over 120 agreements: the receipts
    page in the order deleted (and the newest first) as the whole list does, and the
    deletion duties built from the rows are the ones every agreement parsed and every
    receipt matched against each gave, status for status."""
    rnd = random.Random(seed)
    every = _fill(store, 120, seed)
    given = [a for a in every if a.role is Role.PROVIDER and a.signed.complete]
    for held in rnd.sample(given, 2 * len(given) // 3):
        terms = held.signed.agreement
        order = rnd.choice([o for o in ORDERS if order_in_scope(terms.policy, o)])
        closed_at = T0 + timedelta(days=rnd.randrange(300))
        store.record_order_closed(held.agreement_id, order, closed_at)
        if rnd.random() < 0.6 and deletion_duty(terms.policy, closed_at, order) is not None:
            receipt = DeletionReceipt(
                agreement_id=held.agreement_id,
                consumer_id=terms.consumer_id,
                row_count=rnd.randrange(100),
                content_sha256="ab" * 32,
                deleted_at=closed_at + timedelta(days=rnd.randrange(400)),
                order_id=order,
            )
            store.record_receipt(sign_receipt(receipt, KEYS[terms.consumer_id]))
    whole = store.receipts()
    assert len(whole) == store.count_receipts() > 5
    assert whole == sorted(whole, key=lambda s: (s.receipt.deleted_at, s.receipt.receipt_id))
    assert store.receipts(newest_first=True) == whole[::-1]
    pages = [store.receipts(limit=4, offset=o) for o in range(0, len(whole), 4)]
    assert [r for page in pages for r in page] == whole
    now = T0 + timedelta(days=250)
    reports = store.deletion_duties(now)
    assert reports == _old_deletion_duties(store, now)
    statuses = {r.status for r in reports}
    assert {DutyStatus.PENDING, DutyStatus.FULFILLED} <= statuses
    assert statuses & {DutyStatus.OVERDUE, DutyStatus.DUE, DutyStatus.FULFILLED_LATE}
