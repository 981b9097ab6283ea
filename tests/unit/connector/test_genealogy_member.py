"""Who may ask a genealogy hop once a name has changed hands (`connector.genealogy`).

The QDM names a batch's customer by member *name*, and a name passes to another member
once its holder leaves. The review found ``Trace/Upstream`` decided by that name alone:
a newcomer under a freed name read its predecessor's supply-chain links. With the
caller's member id given, the agreements this node holds decide where they can: an
agreement given to the caller that covers the batch's order ties the batch to it;
one naming another member under the caller's name says the name changed hands, and a
batch nothing ties to the caller is refused. Real agreements, signed and stored, on
both backends.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.genealogy import GenealogyError, NotYourBatch, upstream
from qdspace.connector.negotiation import Role
from qdspace.connector.storage import QualityStore
from qdspace.node.identity.certs import MemberIdentity
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

from ..servicer_doubles import seeded_member

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
CELLEX_KEY, CELLEX = seeded_member("cellex", b"p", "supplier")
#: two members called sunarc: the one that left and its successor under the freed name
OLD_KEY, OLD = seeded_member("sunarc", b"o", "oem")
NEW_KEY, NEW = seeded_member("sunarc", b"n", "oem")
#: a member whose name starts with the other's
EU_KEY, EU = seeded_member("sunarc-eu", b"e", "oem")


@pytest.fixture
def qdm(contract_engine: Engine) -> Iterator[QualityStore]:
    """Cellex's database (SQLite or a PostgreSQL schema): sunarc's cell batches of orders
    PO-OLD, PO-A and PO-NEW, each made from a wafer batch."""
    store = QualityStore(contract_engine)  # (`contract_engine` is migrated to the newest)
    rows = []
    for batch_id, order in (("B-OLD", "PO-OLD"), ("B-A", "PO-A"), ("B-NEW", "PO-NEW")):
        rows.append(
            {
                "batch_id": batch_id,
                "material": "cell",
                "kind": "cell",
                "producer": "cellex",
                "customer": "sunarc",
                "order_id": order,
                "quantity": 1,
                "made_at": "2026-06-01T06:00:00Z",
            }
        )
    assert not store.ingest_rows("batch", enumerate(rows, 1)).rejected
    edges = [{"child_batch_id": r["batch_id"], "parent_batch_id": "W-1"} for r in rows]
    assert not store.ingest_rows("genealogy", enumerate(edges, 1)).rejected
    yield store


def agree(
    engine: Engine,
    consumer_key: SigningKey,
    consumer: MemberIdentity,
    orders: frozenset[str] | None,
    *,
    countersigned: bool = True,
    days: int = 0,
) -> str:
    """An agreement Cellex gave `consumer` for these orders (None: any order), agreed
    `days` after `T0`, stored."""
    agreement_id = f"agr-{uuid.uuid4().hex[:8]}"
    terms = OfferTerms(frozenset({"root-cause-analysis"}), orders=orders, retention_days=7)
    offer = make_offer(agreement_id, CELLEX.member_id, "traceability", terms)
    policy = to_agreement(offer, agreement_id, consumer.member_id)
    at = T0 + dt.timedelta(days=days)
    agreement = ContractAgreement(
        agreement_id, f"neg-{agreement_id}", CELLEX.member_id, consumer.member_id,
        "traceability", policy, at, at,
    )  # fmt: skip
    signed = sign_agreement(agreement, CELLEX_KEY)
    if countersigned:
        signed = countersign(signed, consumer_key, CELLEX_KEY.verify_key)
    ContractStore(engine, bytes(32)).save_agreement(signed, Role.PROVIDER)
    return agreement_id


def answered(store: QualityStore, batch_id: str, member: MemberIdentity) -> bool:
    """Whether `member` is answered about `batch_id` (NotYourBatch: not)."""
    try:
        batch, parents = upstream(
            store.engine, batch_id, customer=member.name, customer_id=member.member_id
        )
    except NotYourBatch:
        return False
    assert (batch.batch_id, [p.batch_id for p in parents]) == (batch_id, ["W-1"])
    return True


def who(store: QualityStore, batch_id: str) -> set[str]:
    return {m for m, member in (("old", OLD), ("new", NEW)) if answered(store, batch_id, member)}


def test_an_agreement_ties_an_order_to_its_member_after_the_name_changed_hands(
    qdm: QualityStore,
) -> None:
    engine = qdm.engine
    # no agreement tells the two apart: the name decides (all the QDM holds)
    assert who(qdm, "B-OLD") == {"old", "new"}
    # the old sunarc contracted order PO-OLD: its batch is its own, and nothing ties the
    # others to the newcomer (the name was another member's here)
    old_agreement = agree(engine, OLD_KEY, OLD, frozenset({"PO-OLD"}))
    assert who(qdm, "B-OLD") == {"old"}
    assert who(qdm, "B-NEW") == {"old"}
    # ended since (the member left): it still says whose order PO-OLD was
    ContractStore(engine, bytes(32)).terminate_agreement(old_agreement, "left", T0)
    assert who(qdm, "B-OLD") == {"old"}
    # an offer the newcomer never countersigned ties nothing to it, but names a second
    # sunarc: a batch nothing ties to either is answered to neither
    agree(engine, NEW_KEY, NEW, frozenset({"PO-NEW"}), countersigned=False, days=30)
    assert who(qdm, "B-NEW") == set()
    # the newcomer's own agreement for its order (one of several it names: parsed)
    agree(engine, NEW_KEY, NEW, frozenset({"PO-NEW", "PO-OTHER"}), days=31)
    assert who(qdm, "B-NEW") == {"new"}
    assert who(qdm, "B-OLD") == {"old"}
    assert who(qdm, "B-A") == set()  # an order no agreement names: nobody's now
    # an agreement for any order names no order: it ties none to the newcomer
    agree(engine, NEW_KEY, NEW, None, days=32)
    assert (who(qdm, "B-OLD"), who(qdm, "B-A")) == ({"old"}, set())
    # nor does one it signed later for its predecessor's order: the first says whose
    agree(engine, NEW_KEY, NEW, frozenset({"PO-OLD"}), days=33)
    assert who(qdm, "B-OLD") == {"old"}


def test_another_name_that_starts_with_the_callers_is_not_the_same_name(
    qdm: QualityStore,
) -> None:
    agree(qdm.engine, EU_KEY, EU, frozenset({"PO-OLD"}))
    assert who(qdm, "B-OLD") == {"old", "new"}  # sunarc-eu is not a sunarc
    assert not answered(qdm, "B-OLD", EU)  # and not the customer


def test_without_a_member_id_the_name_decides_and_an_id_needs_its_name(
    qdm: QualityStore,
) -> None:
    """The operator's and the old callers' question (no member id) is unchanged."""
    agree(qdm.engine, OLD_KEY, OLD, frozenset({"PO-OLD"}))
    batch, _ = upstream(qdm.engine, "B-NEW", customer="sunarc")
    assert batch.batch_id == "B-NEW"
    with pytest.raises(GenealogyError, match="needs its name"):
        upstream(qdm.engine, "B-NEW", customer_id=NEW.member_id)
