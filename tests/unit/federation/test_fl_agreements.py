"""A federated job under contract: updates only from members with an agreement in force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.negotiation import Role
from qdspace.federation.agreements import check_job_agreement, job_offer_terms
from qdspace.federation.job import JobSpec
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

T0 = datetime(2026, 6, 1, tzinfo=UTC)
PROVIDER, KEY_P, KEY_C = "sunarc-0001", SigningKey(b"p" * 32), SigningKey(b"c" * 32)
ASSET = "fl-job:el-defects"


def _agree(store: ContractStore, n: int, consumer: str, terms: OfferTerms, signed: bool) -> str:
    offer = make_offer(f"offer-{n}", PROVIDER, ASSET, terms)
    agreement_id = f"agr-{n}"
    agreement = ContractAgreement(
        agreement_id=agreement_id,
        negotiation_id=f"neg-{n}",
        provider_id=PROVIDER,
        consumer_id=consumer,
        asset_id=ASSET,
        policy=to_agreement(offer, agreement_id, consumer),
        requested_at=T0,
        agreed_at=T0,
    )
    provider_signed = sign_agreement(agreement, KEY_P)
    store.save_agreement(
        countersign(provider_signed, KEY_C, KEY_P.verify_key) if signed else provider_signed,
        Role.PROVIDER,
    )
    return agreement_id


@pytest.fixture
def store(tmp_path: Path) -> ContractStore:
    engine = create_engine(f"sqlite:///{tmp_path / 'contracts.db'}")
    ensure_schema(engine)
    return ContractStore(engine, bytes(range(32)))


def test_only_a_countersigned_training_agreement_admits_updates(store: ContractStore) -> None:
    now = T0 + timedelta(days=1)

    def check(member: str) -> str | None:
        return check_job_agreement(store.agreements(Role.PROVIDER), member, ASSET, now)

    assert check("cellex-0002") == f"member cellex-0002 holds no agreement for {ASSET}"
    _agree(store, 1, "cellex-0002", job_offer_terms(), signed=False)
    assert "not countersigned" in (check("cellex-0002") or "")
    _agree(store, 2, "cellex-0002", job_offer_terms(), signed=True)
    assert check("cellex-0002") is None
    # an agreement for quality use of order data does not cover training on model updates
    quality = OfferTerms(purposes=frozenset({"quality-assurance"}), fields=frozenset({"image"}))
    _agree(store, 3, "polycell-0003", quality, signed=True)
    refused = check("polycell-0003") or ""
    assert "agr-3" in refused and "purpose" in refused
    # terminated: no longer in force
    store.terminate_agreement("agr-2", "member left", now)
    assert "terminated" in (check("cellex-0002") or "")


def test_the_asset_is_part_of_the_job_terms() -> None:
    base = {
        "job_id": "el",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": [[2, 2], [2]],
        "rounds": 1,
        "min_members": 1,
        "members": ["cellex"],
    }
    plain = JobSpec.from_dict(base)
    bound = JobSpec.from_dict({**base, "agreement_asset": ASSET})
    assert plain.agreement_asset is None and "agreement_asset" not in plain.to_dict()
    assert bound.agreement_asset == ASSET and bound.digest() != plain.digest()
    assert JobSpec.from_dict(bound.to_dict()) == bound
