"""Train a tiny CNN on real EL cells, export it, and check ONNX against PyTorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.dataset import ElImages, load_elpv
from inference.errors import ModelLoadError, WeightsError
from inference.model import OnnxClassifier, content_hash
from inference.registry import ModelRegistry, RegistryError
from inference.splits import split_el_images

training = pytest.importorskip("inference.training", exc_type=ImportError)

SIZE = 32
CONFIG = training.TrainConfig(input_size=SIZE, epochs=2, batch_size=32, widths=(4, 8, 8), threads=1)


@pytest.fixture(scope="module")
def cells() -> ElImages:
    data = load_elpv(size=SIZE)
    return data.subset(np.arange(0, len(data), 8))  # 328 real cells, both types


@pytest.fixture(scope="module")
def trained(cells: ElImages) -> training.TrainResult:
    split = split_el_images(cells, seed=1)
    return training.train_and_export(cells.select(split.train), cells.select(split.test), CONFIG)


def test_training_reports_held_out_metrics(trained: training.TrainResult) -> None:
    m = trained.metrics
    assert m.count > 0 and m.true_positives + m.false_negatives > 0
    assert 0.0 <= m.accuracy <= 1.0 and 0.0 <= m.auroc <= 1.0
    assert len(trained.losses) == CONFIG.epochs


def test_onnx_matches_pytorch(trained: training.TrainResult, cells: ElImages) -> None:
    model = OnnxClassifier(trained.onnx_bytes, device="cpu")
    assert model.info.input_size == SIZE and model.info.class_names == ("ok", "defective")
    inputs, _ = training.tensors(cells, CONFIG)
    expected = training.predict_proba(trained.model, inputs)
    got = model.probabilities(inputs.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    verdicts = model.judge(list(cells.images[:20]))
    scores = training.defect_scores(expected[:20], 2)
    assert [v.verdict == "fail" for v in verdicts] == list(scores >= 0.5)
    assert all(v.defect_class == ("defective" if v.verdict == "fail" else None) for v in verdicts)


def test_export_pins_the_opset(trained: training.TrainResult) -> None:
    import onnx

    proto = onnx.load_from_string(trained.onnx_bytes)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [
        training.ONNX_OPSET
    ]


def test_weights_round_trip_and_mismatch(trained: training.TrainResult) -> None:
    weights = training.get_weights(trained.model)
    fresh = training.build_model(CONFIG)
    training.set_weights(fresh, weights)
    assert all(
        np.array_equal(a, b) for a, b in zip(weights, training.get_weights(fresh), strict=True)
    )
    with pytest.raises(WeightsError, match="tensor"):
        training.set_weights(fresh, [w + 0 for w in weights[:-1]] + [np.zeros(3, np.float32)])


def test_registry_versions_by_content_hash(trained: training.TrainResult, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    entry = registry.register(trained.onnx_bytes, "local-train", {"f1": 0.5}, activate=True)
    assert entry.version == content_hash(trained.onnx_bytes)
    assert registry.register(trained.onnx_bytes, "again") == entry  # idempotent
    assert registry.active() == entry and registry.get(entry.version[:8]) == entry
    assert registry.load(entry.version, device="cpu").version == entry.version
    (tmp_path / "models" / entry.file).write_bytes(trained.onnx_bytes[:-1] + b"\x00")
    with pytest.raises(ModelLoadError, match="content hash"):
        registry.load(entry.version, device="cpu")
    with pytest.raises(RegistryError, match="not registered"):
        registry.get("abcdef00")


def test_bad_model_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match=r"junk\.onnx: onnxruntime cannot load it"):
        OnnxClassifier.from_file(junk, device="cpu")
    with pytest.raises(ModelLoadError, match="cannot read"):
        OnnxClassifier.from_file(tmp_path / "missing.onnx", device="cpu")
    with pytest.raises(ModelLoadError):
        ModelRegistry(tmp_path).register(b"\x08\x07garbage", "test")


def test_inspection_modules_do_not_import_torch() -> None:
    code = (
        "import sys, inference.model, inference.registry, inference.frames, inference.dataset, "
        "inference.splits, inference.metrics, inference.line, inference.session, "
        "inference.serve, inference.explain, inference.drift, node.app, node.api.app, node.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_four_grade_variant_exports_and_judges(cells: ElImages) -> None:
    from inference.dataset import GRADE_CLASSES

    config = training.TrainConfig(
        input_size=SIZE, epochs=1, batch_size=32, widths=(4, 8, 8), threads=1, num_classes=4
    )
    result = training.train_and_export(
        cells.subset(range(200)), cells.subset(range(200, 328)), config
    )
    model = OnnxClassifier(result.onnx_bytes, device="cpu")
    assert model.info.class_names == GRADE_CLASSES and model.info.defective_classes == (2, 3)
    inputs, labels = training.tensors(cells.subset(range(200, 328)), config)
    expected = training.predict_proba(result.model, inputs)
    np.testing.assert_allclose(model.probabilities(inputs.numpy()), expected, atol=1e-5, rtol=1e-4)
    assert set(labels.tolist()) <= {0, 1, 2, 3} and result.metrics.count == 128
    for judged, score in zip(
        model.judge(list(cells.images[200:228])),
        training.defect_scores(expected[:28], 4),
        strict=True,
    ):
        assert judged.score == pytest.approx(score, abs=1e-5)
        assert judged.defect_class in ((None,) if score < 0.5 else GRADE_CLASSES[2:])
