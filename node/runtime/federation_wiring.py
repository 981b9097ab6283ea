"""How the federation jobs service is plugged into the node it runs on.

``FederationJobs`` takes what it needs from the rest of the node as plain callables
(an agreement check, a catalog offer, a proof source, a ledger hook), so it can be
built and tested without a contract store or a chain. This module is the other half:
it reads the node's context and makes those callables from the node's contract
runtime (agreements in force, the catalog) and its ledger queue (inclusion proofs).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from qdspace.federation.agreements import check_job_agreement, job_asset
from qdspace.federation.errors import FederationError
from qdspace.federation.job import JobSpec
from qdspace.ledger.proofs import build_proof
from qdspace.node.runtime.federation_jobs import AgreementCheck, FederationJobs, ProofSource

if TYPE_CHECKING:
    from qdspace.node.context import NodeContext
    from qdspace.node.runtime.contracts import ContractRuntime


def jobs_from_context(ctx: NodeContext) -> FederationJobs:
    """The node's jobs service; ``ctx.anchor_version`` is the ledger hook."""
    anchor = ctx.anchor_version
    contracts = getattr(ctx, "contracts", None)
    return FederationJobs(
        ctx.keys.identity,
        ctx.keys.signing_key,
        ctx.layout.federation_jobs,
        anchor=anchor if callable(anchor) else None,
        agreements=None if contracts is None else contract_agreements(contracts),
        offer=None if contracts is None else contract_offer(contracts),
        proofs=ledger_proofs(ctx),
        ca_cert=ctx.keys.trust,
    )


def contract_agreements(contracts: ContractRuntime) -> AgreementCheck:
    """The check over the node's contract store (``node.runtime.contracts.ContractRuntime``)."""
    from qdspace.connector.negotiation import Role

    def check(member_id: str, asset_id: str, at: datetime) -> str | None:
        return check_job_agreement(
            contracts.store.agreements(Role.PROVIDER), member_id, asset_id, at
        )

    return check


def ledger_proofs(ctx: NodeContext) -> ProofSource | None:
    """Proofs from the node's ledger queue (looked up per call: the ledger may be attached
    after the service is built)."""

    def proof(kind: str, ref_id: str) -> str:
        from qdspace.node.runtime.ledger import node_ledger

        ledger = node_ledger(ctx)
        if ledger is None:
            raise FederationError(f"{ctx.keys.identity.name} anchors to no chain (no ledger.json)")
        return build_proof(ledger.queue, kind, ref_id).to_json()

    return proof


def contract_offer(contracts: ContractRuntime) -> Callable[[JobSpec], None]:
    """Publishes a job's asset (``federation.agreements.job_asset``) in the node's catalog."""

    def offer(job: JobSpec) -> None:
        contracts.offer_asset(job_asset(contracts.me.member_id, job))

    return offer
