"""Train a tiny CNN on real EL cells, export it, and check ONNX against PyTorch.

Training must beat the majority-class predictor on held-out cells, over several
seeds and splits, and refuse to export a collapsed network.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qdspace.inference.dataset import ElImages, load_elpv
from qdspace.inference.errors import ModelLoadError, WeightsError
from qdspace.inference.gate import GatePolicy, PromotionRefusedError
from qdspace.inference.metrics import BinaryMetrics
from qdspace.inference.model import OnnxClassifier, content_hash
from qdspace.inference.registry import ModelRegistry, RegistryError
from qdspace.inference.splits import split_el_images

training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)

SIZE = 32
# a few seconds of one thread per run; early stopping may end it sooner
CONFIG = training.TrainConfig(
    input_size=SIZE, epochs=12, batch_size=32, widths=(4, 8, 8), threads=1, patience=4
)
#: Held-out margins over the majority-class predictor (balanced accuracy 0.5, AUROC 0.5):
#: about three cells of a ~50-cell test split; measured runs lie well above them.
MIN_BALANCED_ACCURACY = 0.58
MIN_AUROC = 0.65


@pytest.fixture(scope="module")
def cells() -> ElImages:
    data = load_elpv(size=SIZE)
    return data.subset(np.arange(0, len(data), 8))  # 328 real cells, both types


def _train(cells: ElImages, split_seed: int, config: training.TrainConfig) -> training.TrainResult:
    split = split_el_images(cells, seed=split_seed)
    return training.train_and_export(
        cells.select(split.train), cells.select(split.test), config, val=cells.select(split.val)
    )


@pytest.fixture(scope="module")
def trained(cells: ElImages) -> training.TrainResult:
    return _train(cells, 1, CONFIG)


def _assert_beats_majority(m: BinaryMetrics, what: str) -> None:
    figures = f"{what}: acc {m.accuracy:.3f} bal-acc {m.balanced_accuracy:.3f} F1 {m.f1:.3f} "
    figures += f"AUROC {m.auroc:.3f} (TP {m.true_positives} FP {m.false_positives} "
    figures += f"TN {m.true_negatives} FN {m.false_negatives})"
    print(figures)
    assert m.true_positives > 0 and m.true_negatives > 0, figures  # not one class for all
    assert m.balanced_accuracy >= MIN_BALANCED_ACCURACY, figures
    assert m.auroc >= MIN_AUROC and m.f1 > 0.3, figures


def test_training_beats_the_majority_class_on_held_out_cells(
    trained: training.TrainResult,
) -> None:
    m = trained.metrics
    assert m.count > 0 and m.true_positives + m.false_negatives > 0
    _assert_beats_majority(m, "split 1 seed 0")
    assert 1 <= len(trained.losses) <= CONFIG.epochs
    assert len(trained.val_losses) == len(trained.losses)
    # early stopping kept the epoch with the lowest validation loss
    assert trained.val_losses[trained.best_epoch - 1] == min(trained.val_losses)


@pytest.mark.slow
@pytest.mark.parametrize(("split_seed", "seed"), [(2, 0), (2, 1), (3, 1), (3, 2), (4, 2)])
def test_training_is_stable_over_seeds_and_splits(
    cells: ElImages, split_seed: int, seed: int
) -> None:
    result = _train(cells, split_seed, replace(CONFIG, seed=seed))
    _assert_beats_majority(result.metrics, f"split {split_seed} seed {seed}")


def test_a_network_trained_on_one_class_is_refused_not_exported(cells: ElImages) -> None:
    split = split_el_images(cells, seed=1)
    train = cells.select(split.train)
    only_ok = train.subset(np.flatnonzero(train.labels(2) == 0))
    with pytest.raises(training.TrainingCollapsedError, match=r"every cell called 'ok'") as info:
        training.train_and_export(
            only_ok,
            cells.select(split.test),
            replace(CONFIG, epochs=2),
            val=cells.select(split.val),
        )
    assert "validation cells" in str(info.value) and "not exported" in str(info.value)


def test_a_diverging_learning_rate_is_refused_not_exported(cells: ElImages) -> None:
    split = split_el_images(cells, seed=1)
    config = replace(CONFIG, epochs=3, learning_rate=1e4, warmup_epochs=0.0)
    with pytest.raises(training.TrainingCollapsedError, match="training collapsed") as info:
        training.train_and_export(
            cells.select(split.train), cells.select(split.test), config, val=cells.select(split.val)
        )
    assert "learning rate 10000" in str(info.value)


def test_without_a_validation_split_the_collapse_check_uses_the_training_cells(
    cells: ElImages,
) -> None:
    train = cells.subset(range(200))
    only_bad = train.subset(np.flatnonzero(train.labels(2) == 1))
    with pytest.raises(training.TrainingCollapsedError, match=r"defective.*training cells"):
        training.train_model(only_bad, replace(CONFIG, epochs=1))


def test_the_rate_warms_up_then_decays_on_a_cosine() -> None:
    factors = [training.lr_factor(step, 100, 10, 0.05) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors[:10]))
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] == pytest.approx(0.05, abs=1e-3)
    assert training.lr_factor(500, 100, 10, 0.05) == pytest.approx(0.05)


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
    assert registry.promotions()[-1]["outcome"] == "ungated"  # no audit set: nothing to judge on
    assert registry.load(entry.version, device="cpu").version == entry.version
    (tmp_path / "models" / entry.file).write_bytes(trained.onnx_bytes[:-1] + b"\x00")
    with pytest.raises(ModelLoadError, match="content hash"):
        registry.load(entry.version, device="cpu")
    with pytest.raises(RegistryError, match="not registered"):
        registry.get("abcdef00")


def test_the_registry_gates_activation_on_the_audit_set(
    trained: training.TrainResult, cells: ElImages, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    test = cells.select(split_el_images(cells, seed=1).test)
    registry.set_audit_set(list(test.images), test.labels(2).tolist(), test.frame_ids)
    assert registry.audit_set() is not None and len(registry.audit_set().frame_ids) == len(test)
    untrained = training.export_onnx(training.build_model(replace(CONFIG, seed=5)), SIZE)
    # the first version must beat the majority class: an untrained network does not
    with pytest.raises(PromotionRefusedError, match="the majority-class predictor") as first:
        registry.register(untrained, "local-train", activate=True)
    bad = first.value.version
    assert registry.active() is None and registry.get(bad).version == bad
    assert registry.activate(bad, force=True, reason="operator override").version == bad
    good = registry.register(trained.onnx_bytes, "local-train", activate=True)
    assert registry.active() == good
    # going back to the worse version is refused, with the figures, and nothing changes
    with pytest.raises(PromotionRefusedError, match=rf"active {good.version[:12]}") as back:
        registry.activate(bad)
    assert back.value.decision.difference < 0 and not back.value.decision.promote
    assert registry.active() == good
    registry.set_gate_policy(GatePolicy(metric="auroc", fnr_weight=3.0))
    assert registry.gate_policy().metric == "auroc"
    with pytest.raises(PromotionRefusedError, match="auroc"):
        registry.activate(bad)
    log = registry.promotions()
    assert [(p["version"], p["outcome"]) for p in log] == [
        (bad, "refused"),
        (bad, "forced"),
        (good.version, "activated"),
        (bad, "refused"),
        (bad, "refused"),
    ]
    assert log[1]["reason"] == "operator override" and log[1]["previous"] is None
    assert log[2]["decision"]["incumbent_version"] == bad and log[2]["decision"]["promote"]


def test_inspect_activate_refuses_with_figures_and_force_is_logged(
    trained: training.TrainResult, cells: ElImages, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from qdspace.node.cli import app

    registry = ModelRegistry(tmp_path)
    test = cells.select(split_el_images(cells, seed=1).test)
    registry.set_audit_set(list(test.images), test.labels(2).tolist(), test.frame_ids)
    untrained = training.export_onnx(training.build_model(replace(CONFIG, seed=5)), SIZE)
    bad = registry.register(untrained, "local-train").version
    good = registry.register(trained.onnx_bytes, "local-train").version
    activate = ["inspect", "activate", "--dir", str(tmp_path)]

    refused = CliRunner().invoke(app, [*activate, bad[:12]])
    assert refused.exit_code == 1, refused.output
    assert "not activated" in refused.output and "majority-class predictor" in refused.output
    assert registry.active() is None

    forced = CliRunner().invoke(app, [*activate, bad[:12], "--force", "--reason", "line trial"])
    assert forced.exit_code == 0, forced.output
    assert "forced" in forced.output and "promotion gate: weighted_accuracy" in forced.output
    assert registry.active() is not None and registry.active().version == bad
    last = registry.promotions()[-1]
    assert (last["outcome"], last["reason"], last["decision"]["promote"]) == (
        "forced",
        "line trial",
        False,
    )

    better = CliRunner().invoke(app, [*activate, good[:12]])
    assert better.exit_code == 0, better.output
    text = " ".join(better.output.split())  # the console wraps long lines
    assert f"active model version {good}" in text and "promotion gate" in text
    assert registry.active() is not None and registry.active().version == good
    assert registry.promotions()[-1]["outcome"] == "activated"


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
        "inference.serve, inference.explain, inference.drift, node.run, node.api.app, node.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_four_grade_variant_exports_and_judges(cells: ElImages) -> None:
    from qdspace.inference.dataset import GRADE_CLASSES

    config = replace(CONFIG, num_classes=4)
    split = split_el_images(cells, seed=1)
    test = cells.select(split.test)
    result = training.train_and_export(
        cells.select(split.train), test, config, val=cells.select(split.val)
    )
    model = OnnxClassifier(result.onnx_bytes, device="cpu")
    assert model.info.class_names == GRADE_CLASSES and model.info.defective_classes == (2, 3)
    inputs, labels = training.tensors(test, config)
    expected = training.predict_proba(result.model, inputs)
    np.testing.assert_allclose(model.probabilities(inputs.numpy()), expected, atol=1e-5, rtol=1e-4)
    assert set(labels.tolist()) <= {0, 1, 2, 3} and result.metrics.count == len(test)
    for judged, score in zip(
        model.judge(list(test.images[:28])),
        training.defect_scores(expected[:28], 4),
        strict=True,
    ):
        assert judged.score == pytest.approx(score, abs=1e-5)
        assert judged.defect_class in ((None,) if score < 0.5 else GRADE_CLASSES[2:])
