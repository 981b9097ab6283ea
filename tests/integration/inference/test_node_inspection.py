"""`qdspace train` / `inspect run` / `inspect explain` against a running node process.

The node is a real ``qdspace node start`` process; the CLI trains on the member's own
cells (Cellex Mono: mono cells), serves on the shared local Ray, writes verdicts into
the node's SQLite QDM, and the node's REST API lists the model and serves heatmaps.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from qdspace.inference.alarms import FRAME_BACKLOG, SINK_FAILED, VERDICT_QUEUE_FULL
from qdspace.inference.dataset import frame_id_of, load_elpv
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.splits import SplitManifest
from qdspace.node.cli import app
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec

pytestmark = pytest.mark.integration
pytest.importorskip("qdspace.inference.training", exc_type=ImportError)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("inspect"), [MemberSpec("cellex", "supplier")], chain=False
    )
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def node(network: LocalNetwork) -> MemberProcess:
    return network["cellex"]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        query = "SELECT station, frame_id, model_version FROM qdm_inspection ORDER BY id"
        return [tuple(r) for r in conn.execute(query).fetchall()]


def test_train_inspect_and_explain_through_a_running_node(
    node: MemberProcess, local_ray: None
) -> None:
    d = str(node.directory)
    out = _cli("train", "--dir", d, "--epochs", "6", "--size", "32")
    assert "AUROC" in out and "F1" in out and "(active)" in out
    # the first version had to beat the majority class on the member's audit set
    assert "promotion gate: weighted_accuracy" in out and "majority-class predictor" in out
    registry = ModelRegistry(node.directory)
    assert [p["outcome"] for p in registry.promotions()] == ["activated"]
    with node.client() as client:
        models = client.get("/v1/inspection/models").json()
    assert len(models) == 1 and models[0]["active"] and models[0]["source"] == "local-train:cellex"
    assert {"accuracy", "f1", "auroc", "onnx_opset"} <= set(models[0]["metrics"])
    version = models[0]["version"]
    manifest = SplitManifest.read(NodeLayout(node.directory).split_manifest("cellex"))
    assert models[0]["split_sha256"] == manifest.sha256

    cells = load_elpv(size=32)
    mono = {frame_id_of(i) for i, kind in enumerate(cells.cell_types) if kind == "mono"}
    assert {frame_id_of(i) for i in manifest.train} <= mono  # the member's own cells only

    run = ["inspect", "run", "--dir", d, "--stations", "2", "--fps", "27", "--seconds", "3"]
    out = _cli(*run, "--no-live", "--cpus", "2")
    assert "Ray Serve" in out
    rows = _rows(node.directory / "node.db")
    assert rows and {r[0] for r in rows} == {"el-1", "el-2"}
    assert {r[2] for r in rows} == {version}
    held_out = {frame_id_of(i) for i in manifest.test}
    assert {r[1] for r in rows} <= held_out
    with node.client() as client:
        assert client.get("/v1/qdm/counts").json()["inspection"] == len(rows)
        drift = client.get("/v1/inspection/drift").json()
    assert drift["model_version"] == version and drift["stations"]

    _cli("inspect", "explain", "--dir", d, "--per-group", "1", "--top", "2")
    with node.client() as client:
        listed = client.get("/v1/inspection/explanations").json()
        assert [e["model_version"] for e in listed] == [version]
        index = client.get(f"/v1/inspection/explanations/{version[:12]}").json()
        assert index["split"] == "val" and 1 <= len(index["groups"]) <= 2
        png = index["groups"][0]["examples"][0]["png"]
        got = client.get(f"/v1/inspection/explanations/{version[:12]}/{png}")
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        width, height = Image.open(io.BytesIO(got.content)).size
        assert width > 2 * 300 and height > 300  # the 300 px cell | its heatmap | colour bar
        assert client.get(f"/v1/inspection/explanations/{version[:12]}/x.png").status_code == 404
    with node.client() as client:
        client.headers.pop("Authorization")
        assert client.get("/v1/inspection/models").status_code == 401


def test_a_corrupt_model_file_is_refused_by_name(node: MemberProcess) -> None:
    registry = ModelRegistry(node.directory)
    active = registry.active()
    assert active is not None, "runs after the training test"
    path = registry.root / active.file
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    try:
        args = ["inspect", "run", "--dir", str(node.directory), "--local", "--seconds", "1"]
        result = CliRunner().invoke(app, [*args, "--no-live"])
    finally:
        path.write_bytes(good)
    assert result.exit_code == 1
    assert active.file in result.output and "content hash" in result.output


def test_the_demo_chapter_inspects_at_the_supplier(network: LocalNetwork, local_ray: None) -> None:
    """The supplier's own model on its line; without a federated job (the demo test runs
    the whole story) nothing is offered to the gate and nothing is swapped."""
    from qdspace.node.demo.inspection import (
        CHAPTER,
        inspection_chapter,
        print_inspection,
        train_step,
    )
    from qdspace.node.demo.report import DemoReport

    db = network["cellex"].directory / "node.db"
    before = len(_rows(db))
    # a demo node starts without models: its own version then only has to beat the
    # majority class, not the version the CLI test above trained
    shutil.rmtree(ModelRegistry(network["cellex"].directory).root, ignore_errors=True)
    report = DemoReport(workdir=str(network.workdir))
    train_step(network, report)
    registry = ModelRegistry(network["cellex"].directory)
    own = registry.active()
    assert own is not None and own.version == report.chapters[CHAPTER]["cellex"]["own_version"]
    assert registry.audit_set() is not None
    inspection_chapter(network, report)
    result = report.chapters[CHAPTER]["cellex"]
    rows = _rows(db)[before:]
    assert result["stored"] == len(rows) == result["qdm_new_rows"] > 0
    assert {r[2] for r in rows} == {own.version}
    assert result["federated"] is None and result["swapped_at_s"] is None
    # a loaded machine may hold the judge long enough that the line skips a frame (its
    # backlog rule, tested in test_line); what this chapter owes is that every frame it
    # took is stored or counted as dropped, and each dropped one was alarmed
    assert result["stored"] + result["dropped"] == result["frames"]
    alarmed = result["alarms"].get(FRAME_BACKLOG, 0) + result["alarms"].get(VERDICT_QUEUE_FULL, 0)
    assert SINK_FAILED not in result["alarms"] and alarmed == result["dropped"]
    for held_out in result["held_out"]:
        assert 0.0 <= held_out["accuracy"] <= 1.0 and 0.0 <= held_out["auroc"] <= 1.0
    assert result["explanations_served"] >= 1
    console = Console(record=True, width=100)
    print_inspection(console, report)
    text = console.export_text()
    assert "hot swap at" in text and "gate on federated" in text
    assert "cellex: no federated version was deployed" in text
