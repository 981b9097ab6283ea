"""A member deploys a verified global version of a federated job into its inspection tier.

Before the member's line judges a single cell with a federated model, the member checks:

1. the coordinator's Ed25519 signature over the version record and the parameters'
   digest (``federation.versions.verify_version``, done by ``MemberRunner`` for every
   version it downloads);
2. the ledger anchor: the coordinator's node hands out the inclusion proof of the
   version's ``model_version`` leaf (``Federation/GetVersionProof``); the member checks
   it against the record it holds and against the chain named in *its own*
   ``ledger.json`` (``ledger.proofs.verify_proof``: record hash, audit path, root,
   contract, kind, block and transaction);
3. that the exported ONNX graph computes the same probabilities as the model, with
   onnxruntime, on probe frames: an ``el-mlp`` version as the one graph of
   ``federation.onnx_export`` against numpy, an ``el-cnn`` version with the export of
   ``qdspace train`` (``inference.training.export_onnx``) against PyTorch.

Only then is the ONNX file registered in the member's model registry (with the
member's held-out scores as its metrics) and offered to the promotion gate
(``inference.gate``): it becomes active only if it is no worse than the version the
line serves on the member's audit set; a refused version stays registered with the
gate's figures. A running line (``inference.session.InspectionSession.follow_active``)
hot-swaps to an activated one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import VersionError
from qdspace.federation.params import Params
from qdspace.federation.versions import LEDGER_KIND, ModelVersion
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import LedgerError
from qdspace.ledger.proofs import InclusionProof, Verdict, verify_proof
from qdspace.node.errors import NodeError, PeerError

DEFAULT_ANCHOR_WAIT_S = 60.0
#: Largest difference in any class probability between the ONNX graph and numpy.
EXPORT_TOLERANCE = 1e-4
DEPLOYABLE_MODELS = ("el-mlp", "el-cnn")


class ProofSource(Protocol):
    """Where a version's ledger proof comes from: the coordinator (``FederationClient``, or
    the member service's link to it). Refuses with ``PeerError`` code ``UNAVAILABLE`` while
    the version is not anchored yet."""

    async def version_proof(self, version: int) -> str: ...


@dataclass(frozen=True)
class Deployment:
    """A version in the member's registry, with what was checked before it went there."""

    version: ModelVersion
    registry_version: str
    anchor: Verdict
    max_difference: float
    #: whether the promotion gate let it become the line's model
    active: bool = True
    #: the gate's figures (empty without an audit set)
    gate: str = ""


def member_ledger(directory: Path) -> LedgerClient:
    """A read-only client of the chain named in the member's own ``ledger.json``."""
    from qdspace.node.runtime.ledger import LedgerSettings

    settings = LedgerSettings.load(directory)
    if not settings.enabled or not settings.contract:
        raise NodeError(f"{directory}: no chain configured (ledger.json); cannot check anchors")
    try:
        return LedgerClient(
            settings.rpc_url, settings.contract, expected_chain_id=settings.chain_id
        )
    except LedgerError as exc:
        raise NodeError(f"ledger: {exc}") from None


def check_anchor(version: ModelVersion, proof_json: str, ledger: LedgerClient) -> Verdict:
    """The verdict on ``proof_json`` for exactly this version's record; raises if not valid."""
    try:
        proof = InclusionProof.parse(proof_json)
    except LedgerError as exc:
        raise VersionError(f"version {version.ledger_ref}: proof is malformed: {exc}") from None
    if proof.kind != LEDGER_KIND or proof.ref_id != version.ledger_ref:
        raise VersionError(
            f"version {version.ledger_ref}: the proof is for {proof.kind} {proof.ref_id}"
        )
    verdict = verify_proof(proof.with_record(version.canonical_bytes()), ledger)
    if not verdict.valid:
        raise VersionError(f"version {version.ledger_ref} is not anchored: {verdict.reason}")
    return verdict


async def verified_anchor(
    client: ProofSource,
    version: ModelVersion,
    ledger: LedgerClient,
    *,
    wait_s: float = DEFAULT_ANCHOR_WAIT_S,
    poll_s: float = 1.0,
) -> Verdict:
    """Ask the coordinator for the version's proof (waiting while it is not anchored yet)
    and check it against the member's own view of the chain."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            proof = await client.version_proof(version.version)
            break
        except PeerError as exc:
            if exc.code != "UNAVAILABLE" or time.monotonic() + poll_s > deadline:
                raise
        await asyncio.sleep(poll_s)
    return await asyncio.to_thread(check_anchor, version, proof, ledger)


def probe_frames(size: int, count: int = 8, seed: int = 0) -> NDArray[np.float32]:
    """Frames to compare the ONNX graph with numpy on: noise with dark lines and blotches."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0.3, 0.9, (count, 1, size, size)).astype(np.float32)
    for i in range(count):
        row, col = rng.integers(0, size, 2)
        frames[i, 0, row, :] *= 0.2
        frames[i, 0, : size // 3, col : col + 2] *= 0.4
    return frames


def export_checked(
    version: ModelVersion, params: Params, size: int, probe: NDArray[np.float32] | None = None
) -> tuple[bytes, float]:
    """The ONNX bytes of a version and the largest probability difference from numpy."""
    from qdspace.inference.extras import load_onnxruntime, require_model_export

    require_model_export()  # onnx + onnxruntime (the ``inspect`` extra), a clear error
    from qdspace.federation.onnx_export import el_mlp_reference, export_el_mlp

    ort = load_onnxruntime()

    if version.model not in DEPLOYABLE_MODELS:
        raise VersionError(
            f"version {version.ledger_ref} is a {version.model} model; the inspection tier "
            f"takes EL images, which only {', '.join(DEPLOYABLE_MODELS)} models read"
        )
    frames = probe_frames(size) if probe is None else np.asarray(probe, np.float32)
    if version.model == "el-cnn":
        data, reference = _cnn_export(params, size, frames)
    else:
        doc = f"federated {version.ledger_ref} signed by {version.coordinator}"
        data, reference = export_el_mlp(params, size, doc=doc), el_mlp_reference(params, frames)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"frames": frames})[0]
    difference = float(np.abs(got - reference).max())
    if not difference <= EXPORT_TOLERANCE:
        raise VersionError(
            f"version {version.ledger_ref}: the ONNX export differs from the model by "
            f"{difference:.2e} (tolerance {EXPORT_TOLERANCE:.0e})"
        )
    return data, difference


def _cnn_export(
    params: Params, size: int, frames: NDArray[np.float32]
) -> tuple[bytes, NDArray[np.float64]]:
    """An ``el-cnn`` version exported as ``qdspace train`` exports, and PyTorch's
    probabilities on ``frames`` to hold the graph against."""
    from qdspace.federation.errors import TrainingError
    from qdspace.federation.train_torch import el_cnn_onnx

    try:
        data, model = el_cnn_onnx(params, size)
        import torch

        from qdspace.inference.training import predict_proba

        reference = np.asarray(predict_proba(model, torch.from_numpy(frames)), np.float64)
    except TrainingError as exc:
        raise VersionError(f"an el-cnn version cannot be exported here: {exc}") from exc
    return data, reference


def install(
    node_dir: Path,
    version: ModelVersion,
    params: Params,
    anchor: Verdict,
    size: int,
    probe: NDArray[np.float32] | None = None,
    metrics: dict[str, float] | None = None,
    room: Callable[[int, str], None] | None = None,
) -> Deployment:
    """Export, check and register a verified version in the member's registry; activate
    it if the promotion gate lets it (else it stays registered, with the gate's figures).
    ``room``: asked before the version is written (`NodeContext.check_kept`)."""
    from qdspace.inference.gate import GateDecision, PromotionRefusedError
    from qdspace.inference.registry import ModelRegistry

    if not anchor.valid:
        raise VersionError(f"version {version.ledger_ref}: anchor not verified: {anchor.reason}")
    data, difference = export_checked(version, params, size, probe)
    registry = ModelRegistry(node_dir, room)
    current = registry.active()
    entry = registry.register(
        data,
        source=f"federated:{version.ledger_ref}",
        metrics=metrics,
        parent=None if current is None else current.version,
        notes=f"{version.model} signed by {version.coordinator}; anchored ({anchor.reason}); "
        f"ONNX vs {'PyTorch' if version.model == 'el-cnn' else 'numpy'} max difference "
        f"{difference:.1e}",
    )
    try:
        registry.activate(entry.version, reason=f"federated {version.ledger_ref}")
    except PromotionRefusedError as exc:
        return Deployment(version, entry.version, anchor, difference, False, str(exc))
    last = (registry.promotions() or [{}])[-1]
    gate = ""
    if last.get("version") == entry.version and last.get("decision"):
        gate = GateDecision.from_dict(last["decision"]).summary()
    return Deployment(version, entry.version, anchor, difference, True, gate)
