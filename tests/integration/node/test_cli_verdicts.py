"""``qdspace inspect verdicts | defects`` on a real node directory (SQLite QDM): the
verdicts with serial / order / batch, the p-chart flagging the excursion batch, bad
options refused with a clear line, and no inspection stack loaded on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.identity.authority import Authority
from qdspace.node.init import init_node

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[3]
#: what reading verdicts must not load (the model, Ray, the servers)
HEAVY = ("onnxruntime", "ray", "torch", "grpc", "fastapi", "qdspace.inference.model")


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("cli-verdicts")
    Authority.init(tmp / "authority", "test-space")
    settings = init_node(
        tmp / "sunarc",
        tmp / "authority",
        name="sunarc",
        role="oem",
        db_url=f"sqlite:///{tmp / 'sunarc.db'}",
    )
    store = NodeSettings.load(settings.directory).open_store()
    rows: list[dict[str, Any]] = []
    for b in range(1, 9):
        for k in range(25):
            failed = k < (10 if b == 6 else 1)
            rows.append(
                {
                    "inspection_id": f"el-{b}-{k}",
                    "station": "el-2",
                    "inspected_at": f"2026-06-01T{6 + b:02d}:00:{k:02d}+00:00",
                    "verdict": "fail" if failed else "pass",
                    "defect_class": "microcrack" if failed else "none",
                    "serial": f"M-{b}-{k:03d}",
                    "order_id": "PO-77",
                    "batch_id": f"MB-{b}",
                }
            )
    report = store.ingest_rows("inspection", enumerate(rows, 1))
    store.close()
    assert not report.rejected
    yield settings.directory


def qdspace(*args: str) -> tuple[int, str, list[str]]:
    probe = (
        "import json, sys\n"
        "from qdspace.node.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:], prog_name='qdspace')\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "print('MODULES=' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code or 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    out, _, modules = done.stdout.rpartition("MODULES=")
    return done.returncode, out + done.stderr, json.loads(modules)


def test_defects_flags_the_excursion_batch_without_the_inspection_stack(node_dir: Path) -> None:
    code, out, modules = qdspace("inspect", "defects", "--dir", str(node_dir), "--json")
    assert code == 0, out
    chart = json.loads(out)
    assert [p["batch_id"] for p in chart["points"]] == [f"MB-{b}" for b in range(1, 9)]
    assert [p["batch_id"] for p in chart["points"] if "WE1" in p["rules"]] == ["MB-6"]
    assert chart["unbatched"] == 0
    loaded = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []
    code, out, _ = qdspace("inspect", "defects", "--dir", str(node_dir))
    assert code == 0, out
    assert "MB-6" in out and "WE1" in out and "p-bar" in out
    assert "over the 8 batches judged most recently (--batches 100)" in out
    code, out, _ = qdspace("inspect", "defects", "--dir", str(node_dir), "--batches", "3", "--json")
    assert code == 0, out
    assert [p["batch_id"] for p in json.loads(out)["points"]] == ["MB-6", "MB-7", "MB-8"]


def test_verdicts_by_serial_and_batch(node_dir: Path) -> None:
    code, out, modules = qdspace(
        "inspect", "verdicts", "--dir", str(node_dir), "--serial", "M-6-003", "--json"
    )
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["serial"], r["order_id"], r["batch_id"], r["verdict"]) for r in rows] == [
        ("M-6-003", "PO-77", "MB-6", "fail")
    ]
    assert not [m for m in modules if m.startswith(("onnxruntime", "ray", "torch"))]
    code, out, _ = qdspace(
        "inspect", "verdicts", "--dir", str(node_dir), "--batch", "MB-2", "--limit", "3"
    )
    assert code == 0, out
    assert out.count("MB-2") == 3 and "3 verdicts" in out


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--since", "yesterday"), "--since 'yesterday': not an ISO 8601 time"),
        (("--since", "2026-06-02", "--until", "2026-06-01"), "--since must be before --until"),
        (("--since", "2027-01-01"), "no verdicts with a batch"),
        (("--batches", "0"), "--batches"),
        (("--batches", "2001"), "--batches"),
    ],
)
def test_bad_options_are_one_clear_line(node_dir: Path, args: tuple[str, ...], text: str) -> None:
    code, out, _ = qdspace("inspect", "defects", "--dir", str(node_dir), *args)
    assert code != 0
    assert text in out and "Traceback" not in out


def test_inspect_run_refuses_a_bad_mes_context_before_the_line_starts(
    node_dir: Path, tmp_path: Path
) -> None:
    naive = tmp_path / "naive.csv"
    naive.write_text("station,start,batch_id\nel-1,2026-06-01T06:00:00,B-1\n")
    code, out, modules = qdspace(
        "inspect", "run", "--dir", str(node_dir), "--local", "--mes-context", str(naive)
    )
    assert code != 0 and "naive.csv:2: start 2026-06-01T06:00:00 names no zone" in out
    assert "Traceback" not in out
    assert not [m for m in modules if m.startswith(("onnxruntime", "ray", "torch"))]
    other = tmp_path / "other.csv"
    other.write_text("station,start,batch_id\nline-4,2026-06-01T06:00:00Z,B-1\n")
    code, out, _ = qdspace(
        "inspect", "run", "--dir", str(node_dir), "--local", "--mes-context", str(other)
    )
    assert code != 0 and "names stations line-4; this line runs el-1, el-2" in out
    code, out, modules = qdspace(  # the long-running service checks it the same way
        "inspect", "serve", "--dir", str(node_dir), "--mes-context", str(naive)
    )
    assert code != 0 and "names no zone" in out and "Traceback" not in out
    assert not [m for m in modules if m.startswith(("ray", "onnxruntime"))]
