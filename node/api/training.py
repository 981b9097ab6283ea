"""Operator endpoints to train the line's CNN on the member's own labelled images.

``POST /v1/inspection/trainings`` names a folder of images and its ``labels.csv`` on
the node's machine (where the line's images are kept; the same as a federated job's
data file, ``/v1/federation/sessions``), as absolute paths. The set is checked, decoded
and split before the answer: a bad row, file, path or label is a 400 problem naming
it, and nothing is written. The answer (202) carries the split and class balance
report; the epochs then run in the background, and ``GET
/v1/inspection/trainings/{id}`` shows their losses, then the registered version, its
held-out metrics and the promotion gate's verdict. Errors map through the node's one
fault table; every number a caller sends is bounded.

No ``from __future__ import annotations``: FastAPI reads the route annotations as
objects (the runner is made inside the factory).
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.params import Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from qdspace.node.api.bodies import Body
from qdspace.node.api.caller_paths import caller_path
from qdspace.node.api.deps import Paging
from qdspace.node.runtime.own_training import TrainingRun, TrainingRunner

PREFIX = "/v1/inspection/trainings"
MAX_PATH = 4096
MAX_NAMES = 64
MAX_EPOCHS = 500
MAX_SEED = 2**31 - 1
AbsolutePath = Annotated[str, Field(min_length=2, max_length=MAX_PATH, pattern=r"^/[^\x00]*$")]
LabelName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f,]+$")]
TrainingId = Annotated[str, PathParam(min_length=1, max_length=64)]


class TrainingBody(Body):
    """A training on own images: where they are, how labels read, and the knobs."""

    images: AbsolutePath = Field(description="folder of images on the node's machine")
    labels: AbsolutePath | None = Field(default=None, description="default: IMAGES/labels.csv")
    splits: AbsolutePath | None = Field(
        default=None, description="split manifest; default: splits.json beside the labels"
    )
    grades: bool = Field(default=False, description="labels are grades 0..3 (2 and 3 fail)")
    positive: list[LabelName] = Field(default_factory=list, max_length=MAX_NAMES)
    negative: list[LabelName] = Field(default_factory=list, max_length=MAX_NAMES)
    classes: int = Field(default=2, ge=2, le=4)
    epochs: int = Field(default=12, ge=1, le=MAX_EPOCHS)
    size: int = Field(default=64, ge=16, le=512)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    split_seed: int = Field(default=20240501, ge=0, le=MAX_SEED)
    threads: int = Field(default=1, ge=1, le=64)
    activate: bool = True
    replace_audit: bool = False


class EpochPublic(BaseModel):
    epoch: int
    loss: float


class TrainingPublic(BaseModel):
    """A training's report before the first epoch, its progress, and how it ended."""

    training_id: str
    state: str = Field(description="training | done | refused | failed")
    started_at: float
    finished_at: float | None
    images: int
    rule: str
    split_reused: bool
    split_sha256: str
    test_sha256: str
    splits_file: str
    changes: list[str]
    balance: list[list[str]] = Field(description="rows: label, train, val, test")
    warnings: list[str]
    epochs: list[EpochPublic]
    version: str | None
    active: bool
    metrics: dict[str, float]
    gate: str | None
    error: str | None


def training_public(run: TrainingRun) -> TrainingPublic:
    finite = {k: v for k, v in run.metrics.items() if v == v and abs(v) != float("inf")}
    return TrainingPublic(
        training_id=run.training_id,
        state=run.state,
        started_at=run.started_at,
        finished_at=run.finished_at,
        epochs=[EpochPublic(epoch=int(e["epoch"]), loss=e["loss"]) for e in list(run.epochs)],
        version=run.version,
        active=run.active,
        metrics=finite,
        gate=run.gate,
        error=run.error,
        **run.report,
    )


def create_training_router(
    directory: Path,
    dependencies: Sequence[Depends],
    files: Path | None = None,
    room: Callable[[int, str], None] | None = None,
) -> APIRouter:
    """The ``/v1/inspection/trainings`` routes of the node in ``directory``; ``files``: a
    hosted tenant's folder, the only place its paths may name (`node.api.caller_paths`);
    ``room``: asked before a trained version is written (`NodeContext.check_kept`)."""
    from qdspace.inference.labels import LabelRule
    from qdspace.inference.own_training import OwnTrainRequest

    router = APIRouter(prefix=PREFIX, tags=["inspection"], dependencies=list(dependencies))
    runner = TrainingRunner(directory, room)

    @router.post("", response_model=TrainingPublic, status_code=202)
    async def start(body: TrainingBody) -> TrainingPublic:
        """Check the images now (400 naming the row at fault); train in the background."""
        request = OwnTrainRequest(
            images=caller_path(body.images, files, "images"),
            labels=None if body.labels is None else caller_path(body.labels, files, "labels"),
            splits=None if body.splits is None else caller_path(body.splits, files, "splits"),
            rule=LabelRule(body.grades, tuple(body.positive), tuple(body.negative)),
            classes=body.classes,
            epochs=body.epochs,
            size=body.size,
            seed=body.seed,
            split_seed=body.split_seed,
            threads=body.threads,
            replace_audit=body.replace_audit,
        )
        run = await run_in_threadpool(runner.start, request, body.activate)
        return training_public(run)

    @router.get("", response_model=list[TrainingPublic])
    def trainings(page: Paging, response: Response) -> list[TrainingPublic]:
        """The trainings this node knows (the last few finished, and a running one)."""
        return page.take([training_public(r) for r in runner.runs()], response)

    @router.get("/{training_id}", response_model=TrainingPublic)
    def training(training_id: TrainingId) -> TrainingPublic:
        """A training's progress, or how it ended."""
        return training_public(runner.get(training_id))

    return router
