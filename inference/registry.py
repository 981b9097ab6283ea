"""The node's model versions as files: ``models/<sha256>.onnx`` plus ``models/manifest.json``.

A version is the sha256 of its ONNX bytes, so the same model registered twice is one
version, and a file whose bytes no longer match its name is refused when loaded. The
manifest keeps, per version, where it came from (local training, a federated round),
its held-out metrics, the split it was measured on, and which version is active.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.errors import InferenceError, ModelLoadError
from inference.files import write_atomic
from inference.model import Device, OnnxClassifier, content_hash

logger = logging.getLogger("inference")

MODELS_DIR = "models"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "qdspace.models/1"


class RegistryError(InferenceError, LookupError):
    """A model version is not registered, or the manifest cannot be read."""


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


class ModelRegistry:
    """Model versions stored under ``<node_dir>/models``; safe across threads of one process."""

    def __init__(self, node_dir: Path) -> None:
        self.root = Path(node_dir) / MODELS_DIR
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
        """Store ONNX bytes as a version (checked by loading them); idempotent per content."""
        model = OnnxClassifier(data, source="<registering>", device="cpu")
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
                self.root.mkdir(parents=True, exist_ok=True)
                write_atomic(self.root / entry.file, data)
                raw["versions"].append(entry.to_dict())
            if activate:
                raw["active"] = version
            self._write(raw)
        logger.info("inference.registry: registered %s from %s", version[:12], source)
        return entry

    def activate(self, version: str) -> ModelVersion:
        """Mark a registered version as the one to serve."""
        entry = self.get(version)
        with self._lock:
            raw = self._read()
            raw["active"] = entry.version
            self._write(raw)
        return entry

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


def version_of_file(path: Path) -> str:
    """The version a model file would get: the sha256 of its bytes."""
    try:
        return content_hash(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(str(path), f"cannot read ({exc.strerror or exc})") from exc
