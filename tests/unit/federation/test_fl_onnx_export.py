"""The federated EL model (features + MLP head) as an ONNX graph the inspection tier serves."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qdspace.federation import mlp
from qdspace.federation.el_features import el_features, feature_count
from qdspace.federation.onnx_export import ExportError, el_mlp_reference, export_el_mlp
from qdspace.inference.model import OnnxClassifier
from qdspace.node.runtime.federation import probe_frames


@pytest.mark.parametrize("size", [24, 37])
def test_the_graph_computes_what_numpy_computes(size: int) -> None:
    frames = probe_frames(size, count=12, seed=size)
    rng = np.random.default_rng(size)
    params = mlp.init_params(el_features(frames[:, 0]), 16, seed=2)
    params[3] = rng.normal(0.0, 0.5, params[3].shape).astype(np.float32)
    data = export_el_mlp(params, size)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"frames": frames})[0]
    want = el_mlp_reference(params, frames)
    assert got.shape == (12, 2)
    assert np.abs(got - want).max() < 1e-4
    # the scores are not all alike: the check would notice a graph that ignores the image
    assert np.ptp(want[:, 1]) > 1e-3
    # the inspection tier reads the file's metadata and judges frames with it
    classifier = OnnxClassifier(data, "<test>", device="cpu")
    assert classifier.info.input_size == size and classifier.info.defective_classes == (1,)
    assert np.abs(classifier.probabilities(frames) - want).max() < 1e-4


def test_models_that_do_not_fit_are_refused() -> None:
    dims = feature_count()
    params = [np.zeros(s, np.float32) for s in mlp.model_shapes(dims - 1, 4)]
    with pytest.raises(ExportError, match="EL features"):
        export_el_mlp(params, 32)
    good = [np.ones(s, np.float32) for s in mlp.model_shapes(dims, 4)]
    with pytest.raises(ExportError, match="too small"):
        export_el_mlp(good, 6)
    with pytest.raises(ExportError, match="6 tensors"):
        export_el_mlp(good[:4], 32)
