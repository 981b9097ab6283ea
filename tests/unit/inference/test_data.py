"""Labels, partitions, frames and split manifests of the EL data, on small made-up data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdspace.inference.dataset import (
    ElImages,
    binary_labels,
    class_labels,
    defective_classes,
    frame_id_of,
    grade_labels,
    load_elpv,
    partition_by_supplier,
    read_labels,
)
from qdspace.inference.errors import DatasetError, FrameError
from qdspace.inference.frames import check_frame, image_sha256, read_image, to_model_input
from qdspace.inference.splits import SplitManifest, make_split, split_el_images


def _images(n: int = 40, size: int = 20) -> ElImages:
    rng = np.random.default_rng(0)
    probs = np.array([(0.0, 1 / 3, 2 / 3, 1.0)[i % 4] for i in range(n)])
    return ElImages(
        images=rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        probabilities=probs,
        cell_types=tuple("mono" if i % 3 == 0 else "poly" for i in range(n)),
        indices=np.arange(n, dtype=np.int64),
    )


def test_defective_means_probability_at_least_half() -> None:
    probs = np.array([0.0, 1 / 3, 0.4999, 0.5, 2 / 3, 1.0])
    assert binary_labels(probs).tolist() == [0, 0, 0, 1, 1, 1]
    assert grade_labels(probs).tolist() == [0, 1, 1, 2, 2, 3]
    assert defective_classes(2) == (1,)
    assert defective_classes(4) == (2, 3)
    with pytest.raises(DatasetError, match="num_classes=3"):
        class_labels(probs, 3)


def test_frame_ids_follow_the_data_set_file_names() -> None:
    assert frame_id_of(0) == "cell0001"
    assert _images(3).frame_ids == ("cell0001", "cell0002", "cell0003")


def test_partition_gives_mono_to_cellex_and_poly_to_polycell() -> None:
    data = _images()
    parts = partition_by_supplier(data)
    assert set(parts["cellex"].cell_types) == {"mono"}
    assert set(parts["polycell"].cell_types) == {"poly"}
    assert len(parts["cellex"]) + len(parts["polycell"]) == len(data)
    assert sorted(parts["cellex"].indices.tolist() + parts["polycell"].indices.tolist()) == list(
        range(len(data))
    )


def test_select_by_data_set_index_and_unknown_index() -> None:
    part = partition_by_supplier(_images())["polycell"]
    picked = part.select([2, 1])
    assert picked.indices.tolist() == [2, 1]
    assert np.array_equal(picked.images[0], _images().images[2])
    with pytest.raises(DatasetError, match="index 0 is not in"):
        part.select([0])


def test_misaligned_collection_is_refused() -> None:
    with pytest.raises(DatasetError, match="misaligned"):
        ElImages(
            images=np.zeros((2, 20, 20), dtype=np.uint8),
            probabilities=np.zeros(3),
            cell_types=("mono", "mono"),
            indices=np.arange(2, dtype=np.int64),
        )


def test_labels_file_is_parsed_and_bad_lines_named(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for i, value in enumerate((10, 200)):
        Image.fromarray(np.full((30, 30), value, dtype=np.uint8)).save(
            tmp_path / f"images/c{i}.png"
        )
    (tmp_path / "labels.csv").write_text("images/c0.png 0.0 mono\nimages/c1.png  1.0  poly\n")
    paths, probs, kinds = read_labels(tmp_path)
    assert paths == ["images/c0.png", "images/c1.png"]
    assert probs.tolist() == [0.0, 1.0] and kinds == ("mono", "poly")
    data = load_elpv(size=20, root=tmp_path)
    assert data.images.shape == (2, 20, 20) and data.images[1, 0, 0] == 200
    (tmp_path / "labels.csv").write_text("images/c0.png 0.0 multi\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:1"):
        read_labels(tmp_path)


def test_check_frame_refuses_wrong_shape_and_dtype() -> None:
    ok = np.zeros((32, 32), dtype=np.uint8)
    assert check_frame(ok, "f1") is ok
    with pytest.raises(FrameError, match="frame f2: dtype float32"):
        check_frame(ok.astype(np.float32), "f2")
    with pytest.raises(FrameError, match=r"frame f3: shape \(32, 32, 3\)"):
        check_frame(np.zeros((32, 32, 3), dtype=np.uint8), "f3")
    with pytest.raises(FrameError, match="each side"):
        check_frame(np.zeros((4, 32), dtype=np.uint8), "f4")
    with pytest.raises(FrameError, match="numpy array, got list"):
        check_frame([[0]], "f5")


def test_corrupt_image_file_is_a_frame_error(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    pixels = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    Image.fromarray(pixels).save(good)
    assert image_sha256(read_image(good)) == image_sha256(pixels)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(FrameError, match=r"bad\.png"):
        read_image(bad)


def test_model_input_is_scaled_and_resized() -> None:
    batch = to_model_input([np.full((40, 40), 255, dtype=np.uint8)], 16)
    assert batch.shape == (1, 1, 16, 16) and batch.dtype == np.float32
    assert np.allclose(batch, 1.0)


def test_split_is_reproducible_disjoint_and_stratified() -> None:
    data = _images(200)
    a = split_el_images(data, seed=7)
    assert a == split_el_images(data, seed=7)
    assert a != split_el_images(data, seed=8)
    everything = a.train + a.val + a.test
    assert sorted(everything) == list(range(200)) and len(set(everything)) == 200
    labels = data.labels()
    for split in ("train", "val", "test"):
        rate = labels[list(a.indices(split))].mean()
        assert abs(rate - labels.mean()) < 0.05


def test_manifest_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    manifest = make_split(range(50), ["a"] * 25 + ["b"] * 25, seed=3)
    path = tmp_path / "split.json"
    manifest.write(path)
    assert SplitManifest.read(path) == manifest
    raw = json.loads(path.read_text())
    raw["test"][0], raw["train"][0] = raw["train"][0], raw["test"][0]
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="sha256 does not match"):
        SplitManifest.read(path)
    with pytest.raises(DatasetError, match="unknown split"):
        manifest.indices("holdout")
    with pytest.raises(DatasetError, match="sum to 1"):
        make_split(range(4), ["a"] * 4, fractions=(0.5, 0.5, 0.5))
