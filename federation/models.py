"""The model kinds a member can train in a job, by the job's ``model`` name.

* ``logreg``: softmax regression on feature rows (tests, synthetic benchmarks);
* ``el-mlp``: the EL defect classifier of ``federation.mlp`` on the fixed features
  of ``federation.el_features`` (the demo's model).

A member's data file is ``.npz`` with ``y`` (labels) and either ``x`` (feature rows)
or, for ``el-mlp``, ``images`` (count x height x width EL cells, turned into features
on the member's machine).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdspace.federation import logreg, mlp
from qdspace.federation.el_features import el_features
from qdspace.federation.errors import FederationError, TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.member import Trainer
from qdspace.federation.params import Params, Shapes


@dataclass(frozen=True, slots=True)
class ModelKind:
    """How to read a member's data for, train, and score one kind of job model."""

    name: str
    load: Callable[[Path, Shapes], Dataset]
    trainer: Callable[[Mapping[str, float], Dataset, float], Trainer]
    accuracy: Callable[[Params, Dataset], float]


def _load_logreg(path: Path, shapes: Shapes) -> Dataset:
    (dims, classes), _ = shapes
    return logreg.load_dataset(path, dims, classes)


def _load_el(path: Path, shapes: Shapes) -> Dataset:
    dims, classes = shapes[0][0], shapes[-1][0]
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" in npz.files and "x" not in npz.files:
                x = el_features(np.asarray(npz["images"]))
            else:
                x = np.asarray(npz["x"], dtype=np.float32)
            y = np.asarray(npz["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: not a data file with x (or images) and y ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != dims or y.shape != (x.shape[0],):
        raise TrainingError(
            f"{path}: features have shape {x.shape} and labels {y.shape}; the job's model "
            f"needs (n, {dims}) and (n,)"
        )
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise TrainingError(f"{path}: labels must be in 0..{classes - 1}")
    return Dataset(x, y)


KINDS: dict[str, ModelKind] = {
    "logreg": ModelKind("logreg", _load_logreg, logreg.trainer_for, logreg.accuracy),
    "el-mlp": ModelKind("el-mlp", _load_el, mlp.trainer_for, mlp.accuracy),
}


def model_kind(name: str) -> ModelKind:
    """The kind a job's ``model`` names; an unknown one is refused naming the known ones."""
    kind = KINDS.get(name)
    if kind is None:
        raise FederationError(f"model {name!r} is not one this node trains ({sorted(KINDS)})")
    return kind
