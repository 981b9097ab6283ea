"""Errors of the inspection tier: one base class, subclasses that say what went wrong.

Each subclass also derives from the matching built-in so callers that only know
``ValueError`` or ``ImportError`` still catch them, and each message names the file,
frame or field at fault so an operator can act on the one log line they see.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error raised by the ``inference`` package."""


class DatasetUnavailableError(InferenceError, ImportError):
    """The optional EL image data set (the ``elpv`` extra) is not installed."""


class TrainingUnavailableError(InferenceError, ImportError):
    """PyTorch (the ``train`` extra) is not installed, so this node cannot train."""


class InspectionUnavailableError(InferenceError, ImportError):
    """onnxruntime or Ray Serve (the ``inspect`` extra) is not installed: no inspection."""


class DatasetError(InferenceError, ValueError):
    """Images, labels or a split manifest are missing, inconsistent or tampered with."""


class FrameError(InferenceError, ValueError):
    """A frame cannot be judged: wrong shape or dtype, or an unreadable image file."""

    def __init__(self, frame_id: str, reason: str) -> None:
        super().__init__(f"frame {frame_id}: {reason}")
        self.frame_id = frame_id
        self.reason = reason


class ModelLoadError(InferenceError, ValueError):
    """A model file does not exist, is not a valid ONNX classifier, or has the wrong hash."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"model {path}: {reason}")
        self.path = path
        self.reason = reason


class WeightsError(InferenceError, ValueError):
    """A weight vector does not fit the model it is loaded into (count or shape)."""


class ServingError(InferenceError, RuntimeError):
    """The Ray Serve tier could not be started, reached or shut down."""


class RegistryError(InferenceError, LookupError):
    """A model version is not registered, or the manifest cannot be read."""
