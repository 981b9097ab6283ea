"""How the federation jobs service is plugged into the node it runs on.

``FederationJobs`` takes what it needs from the rest of the node as plain callables
(an agreement check, a catalog offer, a proof source, a ledger hook), so it can be
built and tested without a contract store or a chain. This module is the other half:
it reads the node's context and makes those callables from the node's contract
runtime (agreements in force, the catalog) and its ledger queue (inclusion proofs),
and registers the final version of an ``el-cnn`` job in the node's model registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qdspace.federation import el_cnn
from qdspace.federation.agreements import check_job_agreement, job_asset
from qdspace.federation.errors import FederationError
from qdspace.federation.job import JobSpec
from qdspace.federation.job_files import Published
from qdspace.ledger.proofs import build_proof
from qdspace.node.runtime.federation_jobs import AgreementCheck, FederationJobs, ProofSource

if TYPE_CHECKING:
    from qdspace.node.context import NodeContext
    from qdspace.node.runtime.contracts import ContractRuntime

logger = logging.getLogger("node.federation")


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
        on_round=ctx.metrics.federation_round,
        on_finished=register_final_cnn(ctx.directory, ctx.check_kept),
        room=ctx.check_kept,
    )


def register_final_cnn(
    directory: Path, room: Callable[[int, str], None] | None = None
) -> Callable[[JobSpec, Published], None]:
    """The coordinator's hook on a finished job: an ``el-cnn`` job's final global version
    exported with ``qdspace train``'s export and registered in this node's model registry
    (not activated: activation goes through the promotion gate, ``inspect activate`` or a
    member session's deploy). When the node holds held-out cells for the job
    (``federation/data/<job>-held-out.npz``), their accuracy, F1 and AUROC are recorded
    as the version's metrics."""

    def register(job: JobSpec, published: Published) -> None:
        if job.model != el_cnn.MODEL:
            return
        from qdspace.federation.models import model_kind
        from qdspace.federation.params import params_from_bytes
        from qdspace.federation.train_torch import el_cnn_onnx
        from qdspace.inference.registry import ModelRegistry
        from qdspace.node.layout import NodeLayout
        from qdspace.node.runtime.federation_member import held_out_scores

        params = params_from_bytes(bytes(published.payload))
        size = int(job.training["image_size"])
        data, _ = el_cnn_onnx(params, size)
        test = NodeLayout(directory).federation_data(f"{job.job_id}-held-out")
        metrics = None
        if test.is_file():
            kind = model_kind(job.model)
            metrics = held_out_scores(kind, params, kind.load(test, job.shapes, job.training))
        ref = published.version.ledger_ref
        entry = ModelRegistry(directory, room).register(
            data,
            source=f"federated:{ref}",
            metrics=metrics,
            notes=f"final global version of {job.job_id}, coordinated by this node "
            f"({len(published.version.members)} members); not activated here",
        )
        logger.info(
            "federation: job %s: %s registered as model %s", job.job_id, ref, entry.version[:12]
        )

    return register


def contract_agreements(contracts: ContractRuntime) -> AgreementCheck:
    """The check over the node's contract store (``node.runtime.contracts.ContractRuntime``)."""
    from qdspace.connector.negotiation import Role

    def check(member_id: str, asset_id: str, at: datetime) -> str | None:
        # the member's agreements for the asset only (by index), not every one held
        held = contracts.store.agreements(Role.PROVIDER, asset_id=asset_id, consumer_id=member_id)
        return check_job_agreement(held, member_id, asset_id, at)

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
