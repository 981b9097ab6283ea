"""Trainings on a member's own images, run by the node for its operator's API.

A training takes minutes, so ``POST /v1/inspection/trainings`` must not hold the
request open for it: the images are checked, decoded and split while the caller waits
(so every bad row, file or path is a 400 naming it, and nothing is written), then the
epochs run on a background thread whose progress the caller reads back
(``GET /v1/inspection/trainings/{id}``). One training at a time: a node has a few
cores and two trainings at once would only both be slow, so a second start is 409.
The work itself is ``inference.own_training``, the same as ``qdspace train --images``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdspace.node.errors import NodeError

logger = logging.getLogger("node")

#: finished trainings kept for reading back
KEEP_FINISHED = 20


class TrainingBusy(NodeError):
    """A training is already running on this node."""


class UnknownTraining(NodeError, LookupError):
    """No training with that id on this node (or it is long finished and forgotten)."""


@dataclass
class TrainingRun:
    """One training: what it trains on, how far it is, and how it ended."""

    training_id: str
    started_at: float
    report: dict[str, Any]
    state: str = "training"  # training | done | refused | failed
    epochs: list[dict[str, float]] = field(default_factory=list)
    finished_at: float | None = None
    error: str | None = None
    version: str | None = None
    active: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    gate: str | None = None


def report_of(prepared: Any) -> dict[str, Any]:
    """What the operator sees before the first epoch (the CLI prints the same)."""
    split = prepared.split
    return {
        "images": len(prepared.images.rows),
        "rule": prepared.images.rule.describe(),
        "split_reused": prepared.changes.reused,
        "split_sha256": split.sha256,
        "test_sha256": split.test_sha256,
        "splits_file": str(prepared.request.splits_path),
        "changes": prepared.changes.lines(),
        "balance": [list(row) for row in prepared.balance.table()],
        "warnings": [
            *prepared.balance.warnings,
            *(
                [prepared.audit_note]
                if prepared.audit_note and not prepared.request.replace_audit
                else []
            ),
        ],
    }


class TrainingRunner:
    """Starts trainings of the node in ``directory`` and keeps their progress."""

    def __init__(self, directory: Path, room: Callable[[int, str], None] | None = None) -> None:
        self.directory = directory
        #: asked before a version is written (`inference.registry.KeptRoom`)
        self.room = room
        self._lock = threading.Lock()
        self._busy = False
        self._runs: dict[str, TrainingRun] = {}

    def start(self, request: Any, activate: bool) -> TrainingRun:
        """Check and split now (raising on bad input), then train in the background."""
        from qdspace.inference.own_training import prepare
        from qdspace.inference.registry import ModelRegistry

        with self._lock:
            if self._busy:
                raise TrainingBusy("a training is already running on this node; wait for it")
            self._busy = True
        try:
            registry = ModelRegistry(self.directory, self.room)
            prepared = prepare(request, registry)
            run = TrainingRun(uuid.uuid4().hex[:16], time.time(), report_of(prepared))
            with self._lock:
                self._runs[run.training_id] = run
                self._forget_old()
            thread = threading.Thread(
                target=self._train,
                args=(run, prepared, registry, activate),
                name=f"training-{run.training_id}",
                daemon=True,
            )
            thread.start()
        except BaseException:
            with self._lock:
                self._busy = False
            raise
        return run

    def _train(self, run: TrainingRun, prepared: Any, registry: Any, activate: bool) -> None:
        from qdspace.inference.errors import InferenceError
        from qdspace.inference.gate import GateDecision, PromotionRefusedError
        from qdspace.inference.own_training import train_prepared

        state = "failed"
        try:
            result = train_prepared(
                prepared, registry, lambda e, loss: run.epochs.append({"epoch": e, "loss": loss})
            )
            run.version, run.metrics = result.entry.version, dict(result.entry.metrics)
            if activate:
                registry.activate(result.entry.version)
                run.active = True
                last = registry.promotions()[-1]
                if last.get("decision"):
                    run.gate = GateDecision.from_dict(last["decision"]).summary()
            state = "done"
        except PromotionRefusedError as exc:
            state, run.gate, run.error = "refused", exc.decision.summary(), str(exc)
        except (InferenceError, OSError) as exc:
            run.error = str(exc)
        except Exception as exc:  # the node's own bug: kept for the operator, and logged
            logger.exception("node.training %s: failed", run.training_id)
            run.error = f"internal error: {exc!r}"
        finally:
            # The state goes last and with the node free again: a caller polling the run
            # that sees it ended sees all of it (version, activation, gate) and can start
            # the next one. It read "done" while the gate was still judging, once.
            with self._lock:
                run.finished_at = time.time()
                run.state = state
                self._busy = False
            logger.info("node.training %s: %s %s", run.training_id, state, run.version or "")

    def get(self, training_id: str) -> TrainingRun:
        """A training by id."""
        with self._lock:
            run = self._runs.get(training_id)
        if run is None:
            raise UnknownTraining(f"no training {training_id!r} on this node")
        return run

    def runs(self) -> list[TrainingRun]:
        """Trainings known, oldest first."""
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: r.started_at)

    def _forget_old(self) -> None:
        finished = sorted(
            (r for r in self._runs.values() if r.finished_at is not None),
            key=lambda r: r.started_at,
        )
        for run in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._runs[run.training_id]
