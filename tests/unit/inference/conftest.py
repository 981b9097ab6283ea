"""Small real ONNX models for the inspection tests (exported by the real trainer)."""

from __future__ import annotations

import pytest

SIZE = 32


@pytest.fixture(scope="session")
def model_bytes() -> tuple[bytes, bytes]:
    """Two different untrained tiny EL classifiers (two versions), as ONNX bytes."""
    training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)
    out = []
    for seed in (1, 2):
        config = training.TrainConfig(input_size=SIZE, widths=(4, 8, 8), seed=seed)
        out.append(training.export_onnx(training.build_model(config), SIZE))
    return out[0], out[1]
