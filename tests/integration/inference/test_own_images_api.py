"""``/v1/inspection/trainings`` on a real node process, against a careless or hostile operator.

The node is a real ``qdspace node start`` process (TLS, operator token). A caller sends
labels files with missing, duplicated, unlabelled or escaping rows, images that do not
decode, a symlink out of the folder, relative paths, absurd numbers, a second training
while one runs, an unknown id: each answer is a 4xx problem naming the row or field,
nothing is registered, and the node goes on serving. Then a real training on
synthetic images (a bright bar planted on the defective ones) runs in the background,
registers a version that passes the promotion gate, and a second one reuses the split.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from qdspace.inference.registry import ModelRegistry
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec

pytestmark = pytest.mark.integration
pytest.importorskip("qdspace.inference.training", exc_type=ImportError)

TRAININGS = "/v1/inspection/trainings"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("own-api"), [MemberSpec("cellex", "supplier")], chain=False
    )
    net.create()
    net.start()
    try:
        yield net["cellex"]
    finally:
        net.stop()


def write_set(folder: Path, per_class: int = 40, seed: int = 0) -> list[str]:
    """Noise images of random sizes (PNG, JPEG, TIFF); a bright bar on the defective ones."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(2 * per_class):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        px = rng.normal(110, 25, (h, w))
        if i % 2:
            px[h // 2 - h // 10 : h // 2 + h // 10, :] = 235
        name = f"img{i:03d}.{('png', 'jpg', 'tif')[i % 3]}"
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append(f"{name},{'defective' if i % 2 else 'ok'}")
    return rows


def write_labels(folder: Path, rows: list[str], header: str = "file,label") -> None:
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"HTTP {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    detail: str = response.json()["detail"] if status != 422 else response.text
    return detail


def wait_done(client: httpx.Client, training_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"{TRAININGS}/{training_id}").json()
        if body["state"] != "training":
            return body
        time.sleep(0.3)
    raise AssertionError(f"training {training_id} still running after {timeout}s")


def _bad(tmp: Path, case: str) -> tuple[dict[str, Any], str]:
    folder = tmp / case
    rows = write_set(folder, per_class=4)
    outside = tmp / "outside.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(outside)
    body: dict[str, Any] = {"images": str(folder), "epochs": 2, "size": 32}
    fragment = {
        "missing": ":10: nope.png does not exist",
        "duplicate": ":10: img001.jpg is listed twice (first on line 3)",
        "unknown": ":10: label 'crack' of new.png",
        "dotdot": ":10: '../outside.png' leaves the image folder",
        "absolute": f":10: '{outside}' is absolute",
        "symlink": ":10: link.png leads out of",
        "garbage": ":10: garbage.png: not a PNG, JPEG, BMP or TIFF",
        "empty": "labels.csv: empty",
        "header": "labels.csv:1: header 'image,class'",
        "no-folder": "does-not-exist",
    }[case]
    extra = {
        "missing": "nope.png,ok",
        "duplicate": "img001.jpg,ok",
        "unknown": "new.png,crack",
        "dotdot": "../outside.png,ok",
        "absolute": f"{outside},ok",
        "symlink": "link.png,ok",
        "garbage": "garbage.png,defective",
    }
    if case == "symlink":
        (folder / "link.png").symlink_to(outside)
    if case == "garbage":
        (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    if case in extra:
        write_labels(folder, [*rows, extra[case]])
    elif case == "empty":
        (folder / "labels.csv").write_bytes(b"")
    elif case == "header":
        write_labels(folder, rows, header="image,class")
    elif case == "no-folder":
        body["images"] = str(tmp / "does-not-exist")
    return body, fragment


BAD = (
    "missing",
    "duplicate",
    "unknown",
    "dotdot",
    "absolute",
    "symlink",
    "garbage",
    "empty",
    "header",
    "no-folder",
)


@pytest.mark.parametrize("case", BAD)
def test_bad_images_or_labels_are_a_400_naming_the_row(
    node: MemberProcess, tmp_path: Path, case: str
) -> None:
    body, fragment = _bad(tmp_path, case)
    with node.client() as client:
        detail = problem(client.post(TRAININGS, json=body), 400)
        assert fragment in detail
        assert client.get("/healthz").status_code == 200
    assert ModelRegistry(node.directory).versions() == []
    assert not (tmp_path / case / "splits.json").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"images": "relative/dir"}, "images"),
        ({"epochs": 10**9}, "epochs"),
        ({"epochs": 0}, "epochs"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"classes": 7}, "classes"),
        ({"positive": ["a,b"]}, "positive"),
        ({"images": "/x\u0000y"}, "images"),
    ],
)
def test_absurd_fields_are_refused(
    node: MemberProcess, tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    body = {"images": str(tmp_path)} | change
    with node.client() as client:
        assert field in problem(client.post(TRAININGS, json=body), 422)


def test_without_the_operator_token_nothing_runs(node: MemberProcess, tmp_path: Path) -> None:
    with node.client(token="wrong") as client:
        problem(client.post(TRAININGS, json={"images": str(tmp_path)}), 401)
    with node.client() as client:
        assert "no training" in problem(client.get(f"{TRAININGS}/0123456789abcdef"), 404)


def test_a_training_runs_in_the_background_and_registers_a_gated_version(
    node: MemberProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "set"
    write_labels(folder, write_set(folder))
    body = {"images": str(folder), "epochs": 12, "size": 32}
    with node.client() as client:
        started = client.post(TRAININGS, json=body)
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["state"] == "training" and run["images"] == 80
        assert not run["split_reused"]
        assert ["= defective", "28", "6", "6"] in run["balance"]
        busy = problem(client.post(TRAININGS, json=body), 409)
        assert "already running" in busy
        done = wait_done(client, run["training_id"])
        assert done["state"] == "done", done
        assert done["active"] and done["version"] and "majority-class" in done["gate"], done
        assert len(done["epochs"]) >= 1 and done["metrics"]["accuracy"] >= 0.8
        assert done["metrics"]["images.test.defective"] == 6.0
        listed = client.get(TRAININGS).json()
        assert run["training_id"] in [t["training_id"] for t in listed]
        models = client.get("/v1/inspection/models").json()
        assert [m["source"] for m in models] == ["own-images:set"] and models[0]["active"]

        again = client.post(TRAININGS, json=body | {"seed": 1})
        assert again.status_code == 202, again.text
        assert again.json()["split_reused"]
        assert again.json()["test_sha256"] == run["test_sha256"]
        second = wait_done(client, again.json()["training_id"])
        assert second["state"] in ("done", "refused"), second
        assert second["version"] in [
            m["version"] for m in client.get("/v1/inspection/models").json()
        ]
