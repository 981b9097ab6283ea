"""The inspection tier's optional half: onnxruntime and Ray Serve (the ``inspect`` extra).

A node that exchanges data under contracts, anchors on the ledger or joins federated
training never judges a frame, so its install must not carry Ray (~300 MB) or
onnxruntime. Those two are therefore imported only here, on first use, and a missing
one becomes an ``InspectionUnavailableError`` that says which extra to install, instead
of a ``ModuleNotFoundError`` traceback from deep inside a station or a replica.
Commands that are about to inspect call ``require_inspection`` first, so they fail
before training, loading frames or starting anything.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from qdspace.inference.errors import InspectionUnavailableError

INSPECT_EXTRA = "pip install 'qdspace[inspect]'"


def _load(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InspectionUnavailableError(
            f"{purpose} needs {module}, which is not installed ({exc}); "
            f"install the inspection extra: {INSPECT_EXTRA}"
        ) from exc


def load_onnxruntime() -> ModuleType:
    """The onnxruntime module (judging frames with an ONNX model)."""
    return _load("onnxruntime", "inspection")


def load_ray() -> ModuleType:
    """The ray module (the Ray Serve inspection tier)."""
    return _load("ray", "the Ray Serve inspection tier")


def require_inspection(*, ray: bool = True) -> None:
    """Raise ``InspectionUnavailableError`` unless this install can inspect (with Ray
    Serve when ``ray``); import them now, so the error comes before any work starts."""
    load_onnxruntime()
    if ray:
        load_ray()
        with warnings.catch_warnings():
            # Ray Serve's own pydantic models still pass v1-style extras to ``Field``
            # (ray 2.60); the first import of ray.serve warns, wherever it happens
            warnings.filterwarnings("ignore", message=r"Using extra keyword arguments on `Field`")
            _load("ray.serve", "the Ray Serve inspection tier")


def require_model_export() -> None:
    """Raise ``InspectionUnavailableError`` unless this install can turn a federated
    model into an ONNX inspection model and check it (onnx builds, onnxruntime runs)."""
    _load("onnx", "exporting a model to the inspection tier")
    load_onnxruntime()
