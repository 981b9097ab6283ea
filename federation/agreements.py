"""A federated job under a usage contract: only members with an agreement may send updates.

A job whose terms name an ``agreement_asset`` is offered like any other asset of
the data space (``job_asset``, in its coordinator's catalog), with
``job_offer_terms``: use for the ``training`` purpose only, of the single field
``model_update`` (a member's clipped, masked change to the model; no image, label
or other raw field is ever granted), with reading or streaming raw data and any
redistribution prohibited. Members negotiate exactly that offer; only the job's
members may. Before the
coordinator accepts a member's keys or updates it looks for an agreement the
coordinator (provider) concluded with that member (consumer) for the asset which
is countersigned, not terminated and, evaluated now, allows exactly that use
(``check_job_agreement``). Anything else is refused with ``no_agreement``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from qdspace.connector.assets import Asset
from qdspace.connector.offers import MODEL_UPDATE_FIELD, federated_job_asset
from qdspace.federation.job import JobSpec
from qdspace.policies.evaluate import Request, evaluate
from qdspace.policies.model import Action, OfferTerms, Prohibition

TRAINING_PURPOSE = "training"
__all__ = [
    "MODEL_UPDATE_FIELD",
    "TRAINING_PURPOSE",
    "check_job_agreement",
    "job_asset",
    "job_offer_terms",
]


def job_offer_terms() -> OfferTerms:
    """The offer of a federated job: use of model updates for training, nothing else.

    Reading or streaming rows (raw data) and distributing are prohibited outright.
    """
    return OfferTerms(
        purposes=frozenset({TRAINING_PURPOSE}),
        fields=frozenset({MODEL_UPDATE_FIELD}),
        extra_prohibitions=(Prohibition(Action.READ), Prohibition(Action.STREAM)),
    )


def job_asset(provider_id: str, job: JobSpec) -> Asset:
    """The catalog entry of a job under contract (its ``agreement_asset``) on its coordinator."""
    if job.agreement_asset is None:
        raise ValueError(f"job {job.job_id} names no agreement asset")
    title = f"federated job {job.job_id}: {job.model}, {job.rounds} rounds"
    return federated_job_asset(
        provider_id, job.agreement_asset, title, frozenset(job.members), job_offer_terms()
    )


class HeldAgreement(Protocol):
    """What the contract store keeps of an agreement (``connector.contract_store``)."""

    @property
    def agreement_id(self) -> str: ...

    @property
    def active(self) -> bool: ...

    @property
    def signed(self) -> Any: ...


def check_job_agreement(
    agreements: Iterable[HeldAgreement], member_id: str, asset_id: str, at: datetime
) -> str | None:
    """None if ``member_id`` holds an agreement allowing model updates for ``asset_id`` now.

    Otherwise the reason, naming the agreements looked at and why each does not do.
    """
    reasons: list[str] = []
    for held in agreements:
        terms = getattr(held.signed, "agreement", None)
        if terms is None or terms.consumer_id != member_id or terms.asset_id != asset_id:
            continue
        if not held.active:
            reasons.append(f"agreement {held.agreement_id} is not countersigned or was terminated")
            continue
        decision = evaluate(
            terms.policy,
            Request(
                action=Action.USE,
                at=at,
                asset_fields=frozenset({MODEL_UPDATE_FIELD}),
                purpose=TRAINING_PURPOSE,
                fields=frozenset({MODEL_UPDATE_FIELD}),
            ),
        )
        if decision.allowed:
            return None
        reasons.append(f"agreement {held.agreement_id}: {decision.reason}")
    if not reasons:
        return f"member {member_id} holds no agreement for {asset_id}"
    return f"member {member_id} has no agreement in force for {asset_id}: " + "; ".join(reasons)
