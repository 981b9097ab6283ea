"""A federated job offered in the coordinator's catalog and negotiated as published."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from qdspace.connector.assets import AssetKind
from qdspace.connector.contract_errors import ViewError
from qdspace.connector.offers import Verdict, answer_job_request
from qdspace.connector.paging import asset_source
from qdspace.federation.agreements import job_asset
from qdspace.federation.job import JobSpec
from qdspace.policies.evaluate import Request, evaluate
from qdspace.policies.model import Action, OfferTerms, make_offer, to_agreement

AT = datetime(2026, 6, 1, tzinfo=UTC)
COORDINATOR_ID = "sunarc-0123456789ab"


def _job() -> JobSpec:
    return JobSpec(
        job_id="el",
        coordinator="sunarc",
        model="logreg",
        shapes=((2, 2), (2,)),
        rounds=1,
        min_members=1,
        members=("cellex", "sunarc"),
        agreement_asset="fl-job:el",
    )


def test_the_job_asset_offers_model_updates_for_training_only() -> None:
    asset = job_asset(COORDINATOR_ID, _job())
    assert asset.kind is AssetKind.FEDERATED_JOB and asset.asset_id == "fl-job:el"
    assert asset.fields == {"model_update"} and asset.tables == ()
    assert {p.action for p in asset.offer.prohibitions} == {
        Action.DISTRIBUTE,
        Action.READ,
        Action.STREAM,
    }
    agreement = to_agreement(asset.offer, "agr-1", "cellex-0123456789ab")

    def decide(action: Action, purpose: str) -> str:
        request = Request(action, AT, asset.fields, purpose, fields=frozenset({"model_update"}))
        decision = evaluate(agreement, request)
        return "allowed" if decision.allowed else decision.reason

    assert decide(Action.USE, "training") == "allowed"
    assert decide(Action.READ, "training") == "action read is prohibited"
    assert decide(Action.STREAM, "training") == "action stream is prohibited"
    assert decide(Action.DISTRIBUTE, "training") == "action distribute is prohibited"
    assert "purpose" in decide(Action.USE, "quality-assurance")
    # raw fields are not part of the asset at all
    raw = Request(Action.USE, AT, asset.fields, "training", fields=frozenset({"image"}))
    assert evaluate(agreement, raw).reason == "field image is not offered by this asset"
    # and no row of any table is ever read for it
    with pytest.raises(ViewError, match="has no rows to read"):
        asset_source(create_engine("sqlite://"), asset, None)


def test_only_members_agree_and_only_to_the_published_offer() -> None:
    asset = job_asset(COORDINATOR_ID, _job())
    asked = dataclasses.replace(asset.offer, uid="neg-1:request")
    assert answer_job_request(asset, asked, "cellex").verdict is Verdict.AGREE
    outsider = answer_job_request(asset, asked, "polycell")
    assert outsider.verdict is Verdict.TERMINATE
    assert outsider.reason == "polycell is not a member of job asset fl-job:el"
    # the standard shape without the raw-data prohibitions is not the job's offer
    loose = make_offer(
        "neg-2:request",
        COORDINATOR_ID,
        asset.asset_id,
        OfferTerms(purposes=frozenset({"training"}), fields=frozenset({"model_update"})),
    )
    answer = answer_job_request(asset, loose, "cellex")
    assert answer.verdict is Verdict.TERMINATE and "published offer" in answer.reason


def test_a_job_without_an_agreement_asset_has_no_catalog_entry() -> None:
    job = dataclasses.replace(_job(), agreement_asset=None)
    with pytest.raises(ValueError, match="names no agreement asset"):
        job_asset(COORDINATOR_ID, job)
