"""The node's model versions as files: ``models/<sha256>.onnx`` plus ``models/manifest.json``.

A version is the sha256 of its ONNX bytes, so the same model registered twice is one
version, and a file whose bytes no longer match its name is refused when loaded. The
manifest keeps, per version, where it came from (local training, a federated round),
its held-out metrics, the split it was measured on, and which version is active.

Activation goes through the promotion gate (``inference.gate``) whenever the member
has an audit set (``models/audit.npz``: labelled cells it re-inspected): a version
worse than the active one on those cells is registered but not activated, and
:class:`~inference.gate.PromotionRefusedError` carries the figures. Every activation,
refusal and forced activation is appended to the manifest's ``promotions`` log, so
an auditor can see who overrode the gate and what the figures were at the time.
Whoever activates (the CLI, a federated deploy, the demo) goes through here, so none
of them can forget the gate.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qdspace.inference.errors import InferenceError, ModelLoadError
from qdspace.inference.errors import RegistryError as RegistryError  # its home was here
from qdspace.inference.frames import Frame
from qdspace.inference.gate import (
    GateDecision,
    GateError,
    GatePolicy,
    PromotionRefusedError,
    decide,
)
from qdspace.inference.model import Device, OnnxClassifier, content_hash
from qdspace.util.files import write_atomic

logger = logging.getLogger("inference")

MODELS_DIR = "models"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "qdspace.models/1"
AUDIT_NAME = "audit.npz"
GATE_NAME = "gate.json"

#: ``(size, what)``: refuses (raises) a new file of ``size`` bytes before it is written:
#: the node's free disk, or a managed host's tenant's storage quota, which counts these
#: files (``node.context.NodeContext.check_kept``); the registry never imports the node
KeptRoom = Callable[[int, str], None]


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version and what is known about it."""

    version: str
    file: str
    created_at: str
    source: str
    input_size: int
    class_names: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    split_sha256: str | None = None
    parent: str | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "version": self.version,
            "file": self.file,
            "created_at": self.created_at,
            "source": self.source,
            "input_size": self.input_size,
            "class_names": list(self.class_names),
            "metrics": dict(self.metrics),
            "split_sha256": self.split_sha256,
            "parent": self.parent,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelVersion:
        """Rebuild from ``to_dict`` output."""
        return cls(
            version=str(raw["version"]),
            file=str(raw["file"]),
            created_at=str(raw["created_at"]),
            source=str(raw["source"]),
            input_size=int(raw["input_size"]),
            class_names=tuple(str(n) for n in raw["class_names"]),
            metrics={str(k): float(v) for k, v in dict(raw.get("metrics") or {}).items()},
            split_sha256=raw.get("split_sha256"),
            parent=raw.get("parent"),
            notes=str(raw.get("notes", "")),
        )


@dataclass(frozen=True)
class AuditSet:
    """The member's labelled audit cells: images, 0/1 labels (1 = defective), frame ids."""

    images: tuple[Frame, ...]
    labels: NDArray[np.int64]
    frame_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.labels) == len(self.frame_ids):
            raise GateError(
                f"audit set: {len(self.images)} images, {len(self.labels)} labels and "
                f"{len(self.frame_ids)} frame ids must be as many"
            )
        if not set(np.unique(self.labels).tolist()) <= {0, 1}:
            raise GateError("audit set: labels must be 0 (good) or 1 (defective)")


class ModelRegistry:
    """Model versions stored under ``<node_dir>/models``; safe across threads of one process.

    ``room``: asked before a new version's file (or an audit set) is written; what it
    raises refuses the write and leaves the registry as it was (a hosted tenant's model
    versions must not fill the host's disk past its storage quota)."""

    def __init__(self, node_dir: Path, room: KeptRoom | None = None) -> None:
        self.root = Path(node_dir) / MODELS_DIR
        self.room = room
        self._lock = threading.Lock()

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.root / MANIFEST_NAME

    def _read(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": MANIFEST_FORMAT, "active": None, "versions": []}
        try:
            raw = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{self.manifest_path}: cannot read ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise RegistryError(f"{self.manifest_path}: not a {MANIFEST_FORMAT} manifest")
        return raw

    def _write(self, raw: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.manifest_path, (json.dumps(raw, indent=1) + "\n").encode())

    def versions(self) -> list[ModelVersion]:
        """All registered versions, oldest first."""
        return [ModelVersion.from_dict(v) for v in self._read()["versions"]]

    def get(self, version: str) -> ModelVersion:
        """A version by full hash or unique prefix (at least 6 hex digits)."""
        if len(version) < 6:
            raise RegistryError(f"model version {version!r}: give at least 6 hex digits")
        found = [v for v in self.versions() if v.version.startswith(version)]
        if len(found) != 1:
            what = "is not registered" if not found else "is ambiguous"
            raise RegistryError(f"model version {version!r} {what} in {self.root}")
        return found[0]

    def path(self, version: str) -> Path:
        """The ONNX file of a version."""
        return self.root / self.get(version).file

    def active(self) -> ModelVersion | None:
        """The version the inspection tier should serve, if any was activated."""
        active = self._read().get("active")
        return self.get(active) if active else None

    def register(
        self,
        data: bytes,
        source: str,
        metrics: Mapping[str, float] | None = None,
        split_sha256: str | None = None,
        parent: str | None = None,
        notes: str = "",
        activate: bool = False,
    ) -> ModelVersion:
        """Store ONNX bytes as a version (checked by loading them and judging one plain
        frame: a broken output raises ``ModelLoadError``); idempotent per content.

        With ``activate`` the version then goes through the gate (:meth:`activate`): a
        refused version stays registered and :class:`PromotionRefusedError` is raised.
        """
        model = OnnxClassifier(data, source="<registering>", device="cpu")
        _trial_run(model)
        version = model.version
        entry = ModelVersion(
            version=version,
            file=f"{version}.onnx",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source,
            input_size=model.info.input_size,
            class_names=model.info.class_names,
            metrics=dict(metrics or {}),
            split_sha256=split_sha256,
            parent=parent,
            notes=notes,
        )
        with self._lock:
            raw = self._read()
            known = {v["version"]: v for v in raw["versions"]}
            if version in known:
                entry = ModelVersion.from_dict(known[version])
            else:
                if self.room is not None:  # before a byte of it is written
                    self.room(len(data), f"model version {version[:12]}")
                self.root.mkdir(parents=True, exist_ok=True)
                write_atomic(self.root / entry.file, data)
                raw["versions"].append(entry.to_dict())
            self._write(raw)
        logger.info("inference.registry: registered %s from %s", version[:12], source)
        if activate:
            self.activate(version)
        return entry

    def activate(
        self,
        version: str,
        *,
        force: bool = False,
        reason: str = "",
        decision: GateDecision | None = None,
    ) -> ModelVersion:
        """Make a registered version the one to serve, if the promotion gate lets it.

        Raises :class:`PromotionRefusedError` (with the figures) when the version is
        worse than the active one on the audit set; ``force`` activates it anyway and
        logs that it did, with the figures it overrode. A ``decision`` from
        :meth:`evaluate` against the version active now is used instead of scoring
        again (the demo decides before its run).
        """
        entry = self.get(version)
        current = self.active()
        if current is not None and current.version == entry.version:
            return entry
        incumbent = None if current is None else current.version
        if decision is None or decision.incumbent_version != incumbent:
            decision = self._evaluate_for(entry.version, force)
        if force:
            outcome = "forced"
            logger.warning(
                "inference.registry: %s activated by force over the gate (%s)",
                entry.version[:12],
                reason or "no reason given",
            )
        else:
            outcome = "ungated" if decision is None else "activated"
            if decision is not None and not decision.promote:
                self._log_promotion(entry.version, incumbent, "refused", decision, reason)
                raise PromotionRefusedError(entry.version, decision)
        with self._lock:
            raw = self._read()
            raw["active"] = entry.version
            self._write(raw)
        self._log_promotion(entry.version, incumbent, outcome, decision, reason)
        return entry

    def evaluate(self, version: str) -> GateDecision | None:
        """The gate's decision on ``version`` against the active one; None without audit set."""
        audit = self.audit_set()
        if audit is None:
            return None
        current = self.active()
        candidate = self._audit_scores(self.get(version).version, audit)
        incumbent = None if current is None else self._audit_scores(current.version, audit)
        return decide(
            audit.labels,
            candidate,
            incumbent,
            self.gate_policy(),
            None if current is None else current.version,
        )

    def _evaluate_for(self, version: str, force: bool) -> GateDecision | None:
        """The gate's figures; when forcing, an audit set the gate cannot use is no bar."""
        try:
            return self.evaluate(version)
        except GateError:
            if not force:
                raise
            return None

    def _audit_scores(self, version: str, audit: AuditSet) -> NDArray[np.float64]:
        model = self.load(version, device="cpu")
        probs = model.probabilities(model.prepare(audit.images))
        scores = probs[:, list(model.info.defective_classes)].sum(axis=1)
        return np.asarray(scores, dtype=np.float64)

    def _log_promotion(
        self,
        version: str,
        incumbent: str | None,
        outcome: str,
        decision: GateDecision | None,
        reason: str,
    ) -> None:
        record = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": version,
            "previous": incumbent,
            "outcome": outcome,
            "reason": reason,
            "decision": None if decision is None else decision.to_dict(),
        }
        with self._lock:
            raw = self._read()
            raw.setdefault("promotions", []).append(record)
            self._write(raw)
        summary = "no audit set, gate not applied" if decision is None else decision.summary()
        logger.info("inference.registry: %s %s: %s", version[:12], outcome, summary)

    def promotions(self) -> list[dict[str, Any]]:
        """The log of activations, refusals and forced activations, oldest first."""
        return list(self._read().get("promotions", []))

    def gate_policy(self) -> GatePolicy:
        """The member's gate policy (``models/gate.json``), or the defaults."""
        path = self.root / GATE_NAME
        if not path.exists():
            return GatePolicy()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: cannot read ({exc})") from exc
        return GatePolicy.from_dict(raw)

    def set_gate_policy(self, policy: GatePolicy) -> None:
        """Write the member's gate policy."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.root / GATE_NAME, (json.dumps(policy.to_dict(), indent=1) + "\n").encode()
        )

    def audit_set(self) -> AuditSet | None:
        """The member's labelled audit cells, if it has set them."""
        path = self.root / AUDIT_NAME
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as raw:
                images = raw["images"]
                return AuditSet(
                    tuple(images[i] for i in range(len(images))),
                    raw["labels"].astype(np.int64),
                    tuple(str(f) for f in raw["frame_ids"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise RegistryError(f"{path}: not a readable audit set ({exc})") from exc

    def set_audit_set(
        self, images: Sequence[Frame], labels: Sequence[int], frame_ids: Sequence[str]
    ) -> AuditSet:
        """Store the cells later versions are judged on (images of one size, uint8)."""
        audit = AuditSet(tuple(images), np.asarray(labels, dtype=np.int64), tuple(frame_ids))
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            images=np.stack([np.asarray(i, dtype=np.uint8) for i in audit.images]),
            labels=audit.labels,
            frame_ids=np.asarray(audit.frame_ids, dtype=str),
        )
        if self.room is not None:
            self.room(buffer.getbuffer().nbytes, "the audit set")
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / AUDIT_NAME, buffer.getvalue())
        return audit

    def update_metrics(self, version: str, metrics: Mapping[str, float]) -> ModelVersion:
        """Add or replace metrics of a version (e.g. measured later on another split)."""
        entry = self.get(version)
        merged = replace(entry, metrics={**entry.metrics, **metrics})
        with self._lock:
            raw = self._read()
            raw["versions"] = [
                merged.to_dict() if v["version"] == entry.version else v for v in raw["versions"]
            ]
            self._write(raw)
        return merged

    def load(self, version: str, device: Device = "auto", threads: int = 1) -> OnnxClassifier:
        """Load a version, refusing a file whose bytes no longer match its hash."""
        entry = self.get(version)
        path = self.root / entry.file
        if not path.exists():
            raise ModelLoadError(str(path), "registered but the file is missing")
        return OnnxClassifier.from_file(path, device, threads, expected_version=entry.version)


def _trial_run(model: OnnxClassifier) -> None:
    """Judge one plain frame before a version is stored: a model whose declared output
    shape lies, or that answers NaN, is refused here rather than failing every frame on
    the line. The frame is a smooth ramp, not a constant, so a model that normalises by
    a frame's spread is not refused for a division by zero no camera frame would cause."""
    side = model.info.input_size
    ramp = np.linspace(0, 255, side * side).reshape(side, side).astype(np.uint8)
    try:
        model.judge([ramp])
    except InferenceError as exc:
        raise ModelLoadError(
            "<registering>", f"a trial run on a plain frame failed: {exc}"
        ) from exc
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(
            "<registering>", f"a trial run on a plain frame failed: {type(exc).__name__}: {exc}"
        ) from exc


def version_of_file(path: Path) -> str:
    """The version a model file would get: the sha256 of its bytes."""
    try:
        return content_hash(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(str(path), f"cannot read ({exc.strerror or exc})") from exc
