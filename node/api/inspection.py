"""Inspection endpoints: model versions, FPR/FNR drift, misjudgment heatmaps (read-only).

The router reads what the inspection tier writes into the node directory (the model
registry, ``inspection/drift.json``, ``inspection/explanations/<version>/``); it never
starts Ray or loads a model, so the API stays light. Heatmap files are served only when
the explanation index lists them: a path from the URL is never joined blindly. Lists page
by cursor (`qdspace.node.api.deps.Paging`); every answer is a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.params import Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from qdspace.inference.explain import read_index
from qdspace.inference.registry import ModelRegistry, ModelVersion, RegistryError
from qdspace.node import faults
from qdspace.node.api.deps import Paging
from qdspace.node.layout import NodeLayout

_VERSION = re.compile(r"^[0-9a-f]{6,64}$")


class ModelVersionPublic(BaseModel):
    """A registered model version as the API shows it."""

    version: str
    created_at: str
    source: str
    input_size: int
    class_names: list[str]
    metrics: dict[str, float]
    split_sha256: str | None
    parent: str | None
    notes: str
    active: bool


class ExplanationSummary(BaseModel):
    """Which model version has heatmaps, and how many misjudgment groups."""

    model_version: str
    created_at: str
    misjudged: int
    groups: int


class DriftPublic(BaseModel):
    """FPR/FNR drift of the serving model per station (``inspection/drift.json``); keys a
    newer writer adds pass through."""

    model_config = ConfigDict(extra="allow")

    format: str
    model_version: str | None
    updated_at: str
    thresholds: dict[str, Any]
    stations: list[dict[str, Any]]


class ExamplePublic(BaseModel):
    """One misjudged frame and its heatmap file (``png``, served below)."""

    model_config = ConfigDict(extra="allow")

    frame_id: str
    score: float
    probability: float
    png: str


class MisjudgmentGroupPublic(BaseModel):
    """Misjudged frames of one kind and cell type, with examples."""

    model_config = ConfigDict(extra="allow")

    group_id: str
    kind: str
    cell_type: str
    probability: float
    count: int
    examples: list[ExamplePublic]


class ExplanationIndexPublic(BaseModel):
    """The explanation index of one model version (what ``qdspace inspect explain`` wrote)."""

    model_config = ConfigDict(extra="allow")

    format: str
    model_version: str
    created_at: str
    misjudged: int
    groups: list[MisjudgmentGroupPublic]


def explanations_root(directory: Path) -> Path:
    """Where ``qdspace inspect explain`` writes its folders (one per model version)."""
    return NodeLayout(directory).explanations


def _public(entry: ModelVersion, active: ModelVersion | None) -> ModelVersionPublic:
    return ModelVersionPublic(
        version=entry.version,
        created_at=entry.created_at,
        source=entry.source,
        input_size=entry.input_size,
        class_names=list(entry.class_names),
        metrics=dict(entry.metrics),
        split_sha256=entry.split_sha256,
        parent=entry.parent,
        notes=entry.notes,
        active=active is not None and active.version == entry.version,
    )


def model_entry(registry: ModelRegistry, version: str) -> ModelVersion:
    """The registered version ``version`` names (a prefix of 6+ hex digits), or a 400/404."""
    if not _VERSION.match(version):
        raise HTTPException(400, f"model version {version!r}: expected 6 to 64 hex digits")
    try:
        return registry.get(version)
    except RegistryError as exc:
        raise HTTPException(faults.http_status(exc), str(exc)) from None


def explanation_index(registry: ModelRegistry, directory: Path, version: str) -> dict[str, Any]:
    """The explanation index of a registered version, or a 404."""
    entry = model_entry(registry, version)
    index = read_index(explanations_root(directory) / entry.version)
    if index is None:
        raise HTTPException(404, f"no explanations for model version {entry.version[:12]}")
    return index


def heatmap_file(registry: ModelRegistry, directory: Path, version: str, name: str) -> Path:
    """A heatmap's file, only when the version's explanation index lists ``name``: a name
    from a URL is never joined to a path unless it is one the index wrote (the API and
    the console both serve heatmaps through here)."""
    index = explanation_index(registry, directory, version)
    listed = {e["png"] for g in index["groups"] for e in g["examples"]}
    if name not in listed:
        raise HTTPException(404, f"heatmap {name[:80]!r} is not in the explanation index")
    return explanations_root(directory) / str(index["model_version"]) / name


def create_inspection_router(directory: Path, dependencies: Sequence[Depends]) -> APIRouter:
    """Routes under ``/v1/inspection`` for the node in ``directory``, behind ``dependencies``."""
    router = APIRouter(
        prefix="/v1/inspection", tags=["inspection"], dependencies=list(dependencies)
    )
    registry = ModelRegistry(directory)

    def entry_of(version: str) -> ModelVersion:
        return model_entry(registry, version)

    def index_of(version: str) -> dict[str, Any]:
        return explanation_index(registry, directory, version)

    @router.get("/models", response_model=list[ModelVersionPublic])
    def models(page: Paging, response: Response) -> list[ModelVersionPublic]:
        active = registry.active()
        return page.take([_public(v, active) for v in registry.versions()], response)

    @router.get("/models/{version}", response_model=ModelVersionPublic)
    def model(version: str) -> ModelVersionPublic:
        return _public(entry_of(version), registry.active())

    @router.get("/drift", response_model=DriftPublic)
    def drift() -> dict[str, Any]:
        path = NodeLayout(directory).drift
        if not path.exists():
            raise HTTPException(404, "no drift state yet: run `qdspace inspect run` first")
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return state

    @router.get("/explanations", response_model=list[ExplanationSummary])
    def explanations(page: Paging, response: Response) -> list[ExplanationSummary]:
        root = explanations_root(directory)
        out = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            index = read_index(folder)
            if index is not None:
                out.append(
                    ExplanationSummary(
                        model_version=index["model_version"],
                        created_at=index["created_at"],
                        misjudged=index["misjudged"],
                        groups=len(index["groups"]),
                    )
                )
        return page.take(out, response)

    @router.get("/explanations/{version}", response_model=ExplanationIndexPublic)
    def explanation(version: str) -> dict[str, Any]:
        return index_of(version)

    @router.get("/explanations/{version}/{name}", response_class=FileResponse)
    def heatmap(version: str, name: str) -> FileResponse:
        path = heatmap_file(registry, directory, version, name)
        return FileResponse(path, media_type="image/png")

    return router
