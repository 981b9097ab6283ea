"""Training on a member's own labelled images: labels, files, split manifest, balance, CLI.

The images are synthetic and written by the test: noise of random sizes, modes and
formats, with a bright bar planted across every defective one. A model that learnt
nothing (or read labels misaligned with files) scores like the majority class on the
held-out images, so the CLI test below fails for it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qdspace.inference.balance import balance_report
from qdspace.inference.errors import DatasetError
from qdspace.inference.image_folder import load_labelled_images
from qdspace.inference.image_split import ImageSplit, draw_split, reconcile
from qdspace.inference.labels import LabelRule, parse_labels

FORMATS = (("png", "L"), ("jpg", "RGB"), ("bmp", "L"), ("tif", "RGB"), ("png", "P"), ("tiff", "16"))


def write_set(folder: Path, per_class: int = 40, seed: int = 0, start: int = 0) -> list[str]:
    """``per_class`` good and defective images under ``folder``; returns the CSV rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + 2 * per_class):
        bad = i % 2 == 1
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        px = rng.normal(110, 25, (h, w))
        if bad:
            t = max(2, h // 10)
            px[h // 2 - t : h // 2 + t, :] = 235
        px = np.clip(px, 0, 255)
        ext, mode = FORMATS[i % len(FORMATS)]
        name = f"{'sub/' if i % 5 == 0 else ''}img{i:03d}.{ext}"
        (folder / name).parent.mkdir(exist_ok=True)
        if mode == "16":
            image = Image.fromarray((px * 257).astype(np.uint16))
        elif mode == "RGB":
            image = Image.fromarray(np.stack([px] * 3, -1).astype(np.uint8), "RGB")
        else:
            image = Image.fromarray(px.astype(np.uint8)).convert(mode)
        image.save(folder / name)
        rows.append(f"{name},{'defective' if bad else 'ok'}")
    return rows


def write_labels(folder: Path, rows: list[str], header: str = "file,label") -> Path:
    path = folder / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# -- labels.csv ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("file,label\n", "no rows"),
        ("image,class\na.png,ok\n", "labels.csv:1: header 'image,class'"),
        ("file,label\na.png,ok\nb.png,crack\n", "labels.csv:3: label 'crack' of b.png"),
        (
            "file,label\na.png,ok\n./a.png,bad\n",
            "labels.csv:3: a.png is listed twice (first on line 2)",
        ),
        ("file,label\n../x.png,ok\n", "labels.csv:2: '../x.png' leaves the image folder"),
        ("file,label\nsub/../../x.png,ok\n", "leaves the image folder"),
        ("file,label\n/etc/x.png,ok\n", "labels.csv:2: '/etc/x.png' is absolute"),
        ("file,label\nC:/x.png,ok\n", "is absolute"),
        ("file,label\nsub\\x.png,ok\n", "uses '\\'"),
        ("file,label\na.png,ok,extra\n", "labels.csv:2: 3 fields"),
        ("file,label\na.txt,ok\n", "is not an image file name"),
        ("file,label\n,ok\n", "empty file name"),
    ],
)
def test_a_bad_labels_file_is_refused_naming_its_line(text: str, fragment: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_labels(text, LabelRule())
    assert fragment in str(caught.value)


def test_labels_are_read_by_the_documented_rule() -> None:
    text = "\ufefffile,label\nA.png,OK\nb.png, defective \nc.png,pass\nd.png,1\n\n"
    rows = parse_labels(text, LabelRule())
    assert [(r.line, r.file, r.label_class) for r in rows] == [
        (2, "A.png", 0),
        (3, "b.png", 1),
        (4, "c.png", 0),
        (5, "d.png", 1),
    ]
    grades = parse_labels("file,label\na.png,0\nb.png,likely_defective\nc.png,3\n", LabelRule(True))
    assert [r.label_class for r in grades] == [0, 2, 3]
    assert [LabelRule(True).probability(r.label_class) >= 0.5 for r in grades] == [
        False,
        True,
        True,
    ]
    own = LabelRule(positive=("crack", "burn"), negative=("clean",))
    assert [r.label_class for r in parse_labels("file,label\na.png,Crack\nb.png,clean\n", own)] == [
        1,
        0,
    ]
    with pytest.raises(DatasetError, match="label 'ok'"):  # not in the own vocabulary
        parse_labels("file,label\na.png,ok\n", own)
    with pytest.raises(DatasetError, match="not with --grades"):
        LabelRule(True, positive=("x",))
    with pytest.raises(DatasetError, match="both positive and negative"):
        LabelRule(positive=("x",), negative=("X",))


# -- the image folder ------------------------------------------------------------------


def test_every_format_and_mode_is_decoded_to_grayscale_at_the_model_side(tmp_path: Path) -> None:
    rows = write_set(tmp_path, per_class=6)
    labelled = load_labelled_images(tmp_path, write_labels(tmp_path, rows), LabelRule(), 32)
    assert labelled.data.images.shape == (12, 32, 32)
    assert labelled.data.labels(2).tolist() == [i % 2 for i in range(12)]
    # the bar survives every format: 16-bit TIFF scaled, not clipped to white
    bars = labelled.data.images[:, 14:18, :].mean(axis=(1, 2))
    rest = labelled.data.images[:, :6, :].mean(axis=(1, 2))
    assert all(
        (bar - r > 60) == bool(i % 2) for i, (bar, r) in enumerate(zip(bars, rest, strict=True))
    )
    assert 80 < rest[5] < 140  # the 16-bit TIFF (index 5): noise around 110, not 255
    assert len(set(labelled.digests)) == 12


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    folder = tmp_path / "set"
    rows = write_set(folder, per_class=4)
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(outside)
    if case == "missing":
        rows.append("nope.png,ok")
        fragment = ":10: nope.png does not exist"
    elif case == "garbage":
        (folder / "garbage.png").write_bytes(b"not an image at all")
        rows.append("garbage.png,ok")
        fragment = ":10: garbage.png: not a PNG, JPEG, BMP or TIFF"
    elif case == "gif":
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "anim.png", format="GIF")
        rows.append("anim.png,ok")
        fragment = ":10: anim.png: not a PNG, JPEG, BMP or TIFF"
    elif case == "truncated":
        data = (folder / "img001.jpg").read_bytes()
        (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
        rows.append("cut.jpg,defective")
        fragment = ":10: cut.jpg"
    elif case == "symlink-out":
        (folder / "link.png").symlink_to(outside)
        rows.append("link.png,ok")
        fragment = ":10: link.png leads out of"
    elif case == "folder":
        (folder / "dir.png").mkdir()
        rows.append("dir.png,ok")
        fragment = ":10: dir.png is not a regular file"
    else:
        raise AssertionError(case)
    return folder, write_labels(folder, rows), fragment


BAD_FOLDERS = ("missing", "garbage", "gif", "truncated", "symlink-out", "folder")


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_file_is_refused_naming_its_row(tmp_path: Path, case: str) -> None:
    folder, labels, fragment = _bad_folder(tmp_path, case)
    with pytest.raises(DatasetError) as caught:
        load_labelled_images(folder, labels, LabelRule(), 32)
    assert fragment in str(caught.value)


def test_a_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    rows = write_set(tmp_path, per_class=2)
    (tmp_path / "alias.png").symlink_to(tmp_path / "img002.bmp")
    labels = write_labels(tmp_path, [*rows, "alias.png,ok"])
    assert len(load_labelled_images(tmp_path, labels, LabelRule(), 16).rows) == 5


# -- the split manifest and the balance report -------------------------------------------


def _labels(n_ok: int, n_bad: int) -> dict[str, str]:
    return {f"g{i}.png": "ok" for i in range(n_ok)} | {
        f"b{i}.png": "defective" for i in range(n_bad)
    }


def test_a_split_is_stratified_reused_and_reports_what_changed(tmp_path: Path) -> None:
    labels = _labels(60, 20)
    content = {f: f"h-{f}" for f in labels}
    split = draw_split(labels, content, seed=7)
    assert sorted([*split.train, *split.val, *split.test]) == sorted(labels)
    for name, want in (("train", 14), ("val", 3), ("test", 3)):
        assert sum(1 for f in split.files(name) if labels[f] == "defective") == want
    assert draw_split(labels, content, seed=7) == split  # seeded
    assert draw_split(labels, content, seed=8).test != split.test
    path = tmp_path / "splits.json"
    split.write(path)
    assert ImageSplit.read(path) == split

    same, changes = reconcile(ImageSplit.read(path), labels, content)
    assert same.sha256 == split.sha256 and changes.reused and not changes.changed

    gone = split.test[0]
    relabelled = split.val[0]
    replaced = split.train[0]
    now = {f: v for f, v in labels.items() if f != gone} | {"new.png": "ok", relabelled: "ok"}
    if labels[relabelled] == "ok":
        now[relabelled] = "defective"
    new_content = {f: content.get(f, "h-new") for f in now} | {replaced: "other"}
    moved, changes = reconcile(split, now, new_content)
    assert changes.added == ("new.png",) and "new.png" in moved.train
    assert changes.removed == (gone,) and gone not in moved.test
    assert changes.relabelled == (relabelled,) and relabelled in moved.val
    assert changes.replaced == (replaced,)
    assert set(moved.test) == set(split.test) - {gone}
    assert any("added to train only" in line for line in changes.lines())


def test_an_edited_split_manifest_is_refused(tmp_path: Path) -> None:
    labels = _labels(20, 20)
    path = tmp_path / "splits.json"
    draw_split(labels, {f: "h" for f in labels}).write(path)
    raw = json.loads(path.read_text())
    raw["test"].append(raw["train"].pop())
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="sha256 does not match"):
        ImageSplit.read(path)


def test_the_balance_report_counts_warns_and_refuses() -> None:
    labels = _labels(60, 12) | {"r0.png": "burn", "r1.png": "burn"}
    split = draw_split(labels, {f: "h" for f in labels})
    failing = {"ok": False, "defective": True, "burn": True}
    report = balance_report(split, failing)
    assert report.labels["train"]["ok"] == 42 and report.outcomes["test"]["defective"] == 3
    assert report.metrics()["images.train.ok"] == 42.0
    assert any("label 'burn' has no image in val" in w for w in report.warnings)
    assert any("only 3 defective image(s) in test" in w for w in report.warnings)
    no_bad = draw_split(_labels(30, 0), {})
    with pytest.raises(DatasetError, match="no defective image in the training split"):
        balance_report(no_bad, failing)


# -- `qdspace train --images` ------------------------------------------------------------


def _train(node: Path, folder: Path, *extra: str) -> tuple[int, str]:
    from qdspace.node.cli import app

    args = ["train", "--dir", str(node), "--images", str(folder), "--size", "32", *extra]
    result = CliRunner().invoke(app, [*args, "--epochs", "6", "--threads", "1"])
    return result.exit_code, " ".join(result.output.split())


def test_cli_trains_on_own_images_and_reuses_the_split(tmp_path: Path) -> None:
    pytest.importorskip("qdspace.inference.training", exc_type=ImportError)
    from qdspace.inference.model import OnnxClassifier
    from qdspace.inference.registry import ModelRegistry

    folder, node = tmp_path / "set", tmp_path / "node"
    rows = write_set(folder)
    write_labels(folder, rows)
    code, out = _train(node, folder)
    assert code == 0, out
    assert "split drawn (new)" in out and "class balance" in out and "epoch 6/6" in out
    registry = ModelRegistry(node)
    first = registry.active()
    assert first is not None and first.source == "own-images:set"
    assert first.metrics["images.test.defective"] == 6.0 and first.metrics["images.train.ok"] == 28
    split = ImageSplit.read(folder / "splits.json")
    assert first.split_sha256 == split.sha256
    # held-out images, read from their files at full size by the exported model
    model = OnnxClassifier(registry.path(first.version).read_bytes(), device="cpu")
    frames = [np.asarray(Image.open(folder / f).convert("L")) for f in split.test]
    truth = np.array([split.labels[f] == "defective" for f in split.test])
    scores = model.probabilities(model.prepare(frames))[:, 1]
    accuracy = float(np.mean((scores >= 0.5) == truth))
    assert accuracy >= 0.5 + 0.3, accuracy  # the majority class scores 0.5 here
    assert registry.promotions()[-1]["outcome"] == "activated"  # through the gate

    write_labels(folder, [*rows[1:], *write_set(folder, per_class=3, seed=5, start=200)])
    code, out = _train(node, folder, "--seed", "1")
    assert code == 0, out
    assert "split reused" in out and "6 new image(s) added to train only" in out
    assert "1 image(s) gone from the folder" in out
    again = ImageSplit.read(folder / "splits.json")
    assert again.test == tuple(f for f in split.test if f != rows[0].split(",")[0])
    assert len(registry.versions()) == 2
    test_hashes = {re.search(r"test_sha256=(\w+)", v.notes).group(1) for v in registry.versions()}  # type: ignore[union-attr]
    assert len(test_hashes) == (1 if again.test == split.test else 2)


LABEL_CASES = {
    "missing": ("nope.png,ok", ":10: nope.png does not exist"),
    "duplicate": ("img002.bmp,ok", ":10: img002.bmp is listed twice (first on line 4)"),
    "unknown": ("img002.bmp,crack", ":4: label 'crack' of img002.bmp"),
    "dotdot": ("../outside.png,ok", ":10: '../outside.png' leaves the image folder"),
    "absolute": ("/tmp/outside.png,ok", ":10: '/tmp/outside.png' is absolute"),
}


@pytest.mark.parametrize(
    "case", [*LABEL_CASES, "empty", "header", *BAD_FOLDERS, "one-class", "4-classes"]
)
def test_cli_refuses_bad_input_and_writes_nothing(tmp_path: Path, case: str) -> None:
    node = tmp_path / "node"
    extra: list[str] = []
    if case in BAD_FOLDERS:
        folder, labels, fragment = _bad_folder(tmp_path, case)
    else:
        folder = tmp_path / "set"
        rows = write_set(folder, per_class=4)
        labels = write_labels(folder, rows)
        fragment = ""
        if case in LABEL_CASES:
            row, fragment = LABEL_CASES[case]
            if case == "unknown":
                rows[2] = row
            else:
                rows.append(row)
            write_labels(folder, rows)
        elif case == "empty":
            labels.write_text("")
            fragment = "labels.csv: empty"
        elif case == "header":
            write_labels(folder, rows, header="path,grade")
            fragment = "labels.csv:1: header 'path,grade'"
        elif case == "one-class":
            write_labels(folder, [r for r in rows if r.endswith(",ok")])
            fragment = "no defective image in the training split"
        elif case == "4-classes":
            extra = ["--classes", "4"]
            fragment = "a 4-class model learns grades"
    code, out = _train(node, folder, *extra)
    assert code == 1, out
    assert fragment in out
    assert not (node / "models").exists()  # no version, no audit set
    assert not (folder / "splits.json").exists()


# -- the node's background training (``/v1/inspection/trainings``) -------------------------
#
# A caller polls a TrainingRun while its thread still works. The run said ``done`` as soon
# as the model was registered, while the promotion gate was still judging it; a caller that
# polled then read ``done`` without the activation or the gate (a fresh-clone CI run failed
# on it), and a training it started next was refused as busy. Here the gate is held open on
# an event, so that moment lasts as long as the test needs.


def test_a_run_is_training_until_its_activation_and_gate_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdspace.inference.own_training import OwnTrainRequest
    from qdspace.inference.registry import ModelRegistry
    from qdspace.node.runtime.own_training import TrainingBusy, TrainingRunner

    folder = tmp_path / "set"
    write_labels(folder, write_set(folder))
    judging, release = threading.Event(), threading.Event()
    real_activate = ModelRegistry.activate

    def held_activate(self: ModelRegistry, version: str, *args: object, **kw: object) -> object:
        judging.set()
        assert release.wait(120), "the test never released the gate"
        return real_activate(self, version, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRegistry, "activate", held_activate)
    runner = TrainingRunner(tmp_path / "node")
    request = OwnTrainRequest(images=folder, epochs=12, size=32)
    run = runner.start(request, activate=True)
    assert judging.wait(180), runner.get(run.training_id)

    seen = runner.get(run.training_id)
    assert seen.version is not None  # registered, not yet judged
    assert (seen.state, seen.active, seen.gate, seen.finished_at) == ("training", False, None, None)
    with pytest.raises(TrainingBusy):
        runner.start(request, activate=True)

    release.set()
    deadline = time.monotonic() + 60
    while runner.get(run.training_id).state == "training" and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = runner.get(run.training_id)
    assert ended.state == "done", ended
    assert ended.active and ended.gate and "majority-class" in ended.gate, ended
    assert ended.finished_at is not None
    again = runner.start(request, activate=False)  # the node is free the moment it reads done
    while runner.get(again.training_id).state == "training" and time.monotonic() < deadline + 60:
        time.sleep(0.05)  # not left training while the interpreter exits
    assert runner.get(again.training_id).state == "done"
