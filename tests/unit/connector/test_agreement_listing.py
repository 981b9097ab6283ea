"""A node's agreements at scale: listings filtered and paged in SQL as the whole list
would be, the overview's counts made in SQL, the indexes they search, and an older store
migrated (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, create_engine, select

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_store import ContractStore, StoredAgreement
from qdspace.connector.contract_store.agreements import agreement_table
from qdspace.connector.negotiation import Role
from qdspace.connector.storage import migrate
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

KEK = b"k" * 32
T0 = datetime(2026, 6, 1, tzinfo=UTC)
MEMBERS = ("oem", "cellex", "sunarc", "polycell")
ASSETS = ("inspections", "traceability", "model-updates")
KEYS = {m: SigningKey(bytes([i + 1]) * 32) for i, m in enumerate(MEMBERS)}


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, KEK)


def _agreement(rnd: random.Random, n: int) -> tuple[object, Role]:
    provider, consumer = rnd.sample(MEMBERS, 2)
    asset = rnd.choice(ASSETS)
    offer = make_offer(f"offer-{n}", provider, asset, OfferTerms(purposes=frozenset({"qa"})))
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
    """The console's newest 50 and a federation member's agreements for an asset search
    an index; neither reads every agreement (a sort of them all for a page)."""
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
    for name, query, index in (
        ("newest", newest, "ix_contract_agreement_agreed"),
        ("asset", asset, "ix_contract_agreement_asset"),
    ):
        plan = _plan(contract_engine, query)
        assert any(index in step for step in plan), (name, plan)
        assert not [s for s in plan if "TEMP B-TREE" in s or "Seq Scan" in s], (name, plan)


def test_agreements_stored_before_the_listing_indexes_are_listed_after_the_upgrade(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0018_transfer_pull_key")
    old = ContractStore(engine, KEK)
    every = sorted(_fill(old, 12, 5), key=_agreed)
    migrate(engine)
    store = ContractStore(engine, KEK)
    assert store.agreements(limit=3, newest_first=True) == every[::-1][:3]
    with engine.connect() as conn:
        names = {r[1] for r in conn.exec_driver_sql("PRAGMA index_list(contract_agreement)")}
    assert {"ix_contract_agreement_agreed", "ix_contract_agreement_asset"} <= names
    engine.dispose()
