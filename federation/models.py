"""The model kinds a member can train in a job, by the job's ``model`` name.

* ``logreg``: softmax regression on feature rows (tests, synthetic benchmarks);
* ``el-mlp``: the EL defect classifier of ``federation.mlp`` on the fixed features
  of ``federation.el_features`` (the light option: numpy only, seconds a round);
* ``el-cnn``: the line's own CNN (``federation.el_cnn``; PyTorch on the member), so
  the final version is the network the line serves.

A member's data file is ``.npz`` with ``y`` (labels) and either ``x`` (feature rows)
or, for ``el-mlp`` and ``el-cnn``, ``images`` (count x height x width EL cells, turned
into features or model inputs on the member's machine).

A member trains only the kinds listed here: a job naming another model is refused
before its first round (``model_kind``). The coordinator checks the terms of the kinds
it knows when a job is published (``job_problems``); it only averages vectors, so it
may publish a job of a kind it does not train itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qdspace.federation import el_cnn, logreg, mlp
from qdspace.federation.el_features import el_features, feature_count
from qdspace.federation.errors import FederationError, TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.member import Trainer
from qdspace.federation.params import Params, Shapes


@dataclass(frozen=True, slots=True)
class ModelKind:
    """How to read a member's data for, train, and score one kind of job model."""

    name: str
    loader: Callable[[Path, Shapes, Mapping[str, float]], Dataset]
    trainer: Callable[[Mapping[str, float], Dataset, float], Trainer]
    accuracy: Callable[[Params, Dataset], float]
    #: P(defective) per row, for the binary EL models (F1 and AUROC of a version)
    defect_scores: Callable[[Params, Dataset], NDArray[np.float64]] | None = None
    #: what is wrong with a job's shapes and terms for this kind (empty: nothing)
    problems: Callable[[Shapes, Mapping[str, float]], list[str]] | None = None

    def load(self, path: Path, shapes: Shapes, terms: Mapping[str, float] | None = None) -> Dataset:
        """A member's data file, read for a job of ``shapes`` and training ``terms``."""
        return self.loader(path, shapes, terms or {})


def _load_logreg(path: Path, shapes: Shapes, terms: Mapping[str, float]) -> Dataset:
    (dims, classes), _ = shapes
    return logreg.load_dataset(path, dims, classes)


def _load_el(path: Path, shapes: Shapes, terms: Mapping[str, float]) -> Dataset:
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


#: Most local epochs per round the numpy kinds (``logreg``, ``el-mlp``) run, as for
#: ``el-cnn`` (``el_cnn.MAX_EPOCHS``), and their batch size range.
MAX_EPOCHS = el_cnn.MAX_EPOCHS
MAX_BATCH = 4096


def _sgd_term_problems(terms: Mapping[str, float]) -> list[str]:
    """What is wrong with the ``training`` terms of a numpy kind (empty: nothing).

    Terms come from the coordinator and each member runs them on its own machine:
    unchecked, ``epochs`` 1e12 kept a member's CPU busy for good, ``batch`` 0 failed
    inside numpy, and a negative batch trained on nothing. The same bounds as ``el-cnn``'s
    (``el_cnn.term_problems``); a member refuses other terms before its first round."""
    out = []
    epochs = terms.get("epochs", 1)
    if epochs != int(epochs) or not 1 <= epochs <= MAX_EPOCHS:
        out.append(f"epochs must be a whole number in 1..{MAX_EPOCHS}, got {epochs:g}")
    batch = terms.get("batch", 32)
    if batch != int(batch) or not 1 <= batch <= MAX_BATCH:
        out.append(f"batch must be a whole number in 1..{MAX_BATCH}, got {batch:g}")
    lr = terms.get("lr", 0.1)
    if not 0 < lr <= 1:
        out.append(f"lr must be in (0, 1], got {lr:g}")
    if not 0 <= terms.get("weight_decay", 0.0) <= 1:
        out.append("weight_decay must be in [0, 1]")
    return out


def _logreg_problems(shapes: Shapes, terms: Mapping[str, float]) -> list[str]:
    """A ``logreg`` job's training terms (``_sgd_term_problems``); its shapes are any a
    member's data fits (``logreg.load_dataset`` refuses others)."""
    return _sgd_term_problems(terms)


#: Widest hidden layer an ``el-mlp`` job may have: the demo uses 8, the accuracy
#: benchmark 32; 4096 (1.4 M scalars over the EL features) is far past what the few
#: hundred features need, and far short of what could exhaust a member's memory.
MAX_MLP_HIDDEN = 4096


def _mlp_problems(shapes: Shapes, terms: Mapping[str, float]) -> list[str]:
    """An ``el-mlp`` job's shapes must be ``mlp.model_shapes`` over the EL features (what
    members compute and the ONNX export takes) with a hidden width in 1..MAX_MLP_HIDDEN:
    the coordinator picks the shapes, and a member must not follow it into a model of
    any size (hidden 5e7 made a 62 GiB download limit). Its training terms are bounded as
    ``logreg``'s are (``_sgd_term_problems``)."""
    out = _sgd_term_problems(terms)
    dims = feature_count()
    hidden = shapes[3][0] if len(shapes) == 6 and len(shapes[3]) == 1 else 0
    if 1 <= hidden <= MAX_MLP_HIDDEN and tuple(shapes) == mlp.model_shapes(dims, hidden):
        return out
    c = mlp.CLASSES
    return [
        *out,
        f"shapes {[list(s) for s in shapes[:6]]} are not an el-mlp model: over the {dims} EL "
        f"features they must be [[{dims}], [{dims}], [{dims}, H], [H], [H, {c}], [{c}]] "
        f"with a hidden width H in 1..{MAX_MLP_HIDDEN}",
    ]


def _mlp_scores(params: Params, data: Dataset) -> NDArray[np.float64]:
    return mlp.defect_scores(params, data.x)


def _cnn_trainer(terms: Mapping[str, float], data: Dataset, mu: float = 0.0) -> Trainer:
    """A member's rounds of an ``el-cnn`` job (PyTorch is imported at the first round)."""
    config = el_cnn.CnnTerms.from_terms(terms)

    def train(params: Params, round_: int) -> tuple[Params, int]:
        from qdspace.federation.train_torch import train_el_cnn

        return train_el_cnn(data, params, config, round_, mu)

    return train


def _cnn_scores(params: Params, data: Dataset) -> NDArray[np.float64]:
    from qdspace.federation.train_torch import el_cnn_scores

    return el_cnn_scores(params, data)


def _cnn_accuracy(params: Params, data: Dataset) -> float:
    return float(np.mean((_cnn_scores(params, data) >= 0.5) == (data.y == 1)))


KINDS: dict[str, ModelKind] = {
    "logreg": ModelKind(
        "logreg", _load_logreg, logreg.trainer_for, logreg.accuracy, problems=_logreg_problems
    ),
    "el-mlp": ModelKind(
        "el-mlp", _load_el, mlp.trainer_for, mlp.accuracy, _mlp_scores, _mlp_problems
    ),
    el_cnn.MODEL: ModelKind(
        el_cnn.MODEL,
        el_cnn.load_images,
        _cnn_trainer,
        _cnn_accuracy,
        _cnn_scores,
        el_cnn.job_problems,
    ),
}


def model_kind(name: str) -> ModelKind:
    """The kind a job's ``model`` names; an unknown one is refused naming the known ones."""
    kind = KINDS.get(name)
    if kind is None:
        raise FederationError(f"model {name!r} is not one this node trains ({sorted(KINDS)})")
    return kind


def job_problems(model: str, shapes: Shapes, terms: Mapping[str, float]) -> list[str]:
    """What keeps a job's shapes and terms from fitting its model, when this node knows
    the model (a kind it does not know is not judged here: members refuse it)."""
    kind = KINDS.get(model)
    if kind is None or kind.problems is None:
        return []
    return kind.problems(shapes, terms)
