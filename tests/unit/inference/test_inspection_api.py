"""Heatmaps of misjudged cells, and the read-only inspection API that lists and serves them."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException
from PIL import Image

from qdspace.inference.alarms import AlarmLog
from qdspace.inference.dataset import ElImages
from qdspace.inference.drift import DriftMonitor
from qdspace.inference.explain import explain, find_misjudgments, group_misjudgments, occlusion_map
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.verdicts import ServedVerdict
from qdspace.node.api.inspection import create_inspection_router, explanations_root


def _cells(n: int = 24) -> ElImages:
    rng = np.random.default_rng(4)
    return ElImages(
        images=rng.integers(0, 256, (n, 40, 40), dtype=np.uint8),
        probabilities=np.array([(0.0, 1.0, 1 / 3, 2 / 3)[i % 4] for i in range(n)]),
        cell_types=tuple(("mono", "poly")[i % 3 == 0] for i in range(n)),
        indices=np.arange(n, dtype=np.int64),
    )


def test_occlusion_map_finds_the_patch_that_drives_the_score(
    model_bytes: tuple[bytes, bytes],
) -> None:
    model = OnnxClassifier(model_bytes[0], device="cpu")
    frame = np.full((64, 64), 120, np.uint8)
    heat = occlusion_map(model, frame)
    assert heat.shape == (model.info.input_size,) * 2 and np.isfinite(heat).all()
    # a uniform frame greyed with its own mean changes nothing: no region matters
    assert np.allclose(heat, 0.0, atol=1e-6)


def test_groups_are_ranked_by_size_and_split_by_kind() -> None:
    model_free = [
        ("FP", "mono", 0.0),
        ("FP", "mono", 0.0),
        ("FN", "poly", 1.0),
        ("FP", "poly", 0.0),
        ("FN", "poly", 1.0),
        ("FN", "poly", 1.0),
    ]
    from qdspace.inference.explain import Misjudgment

    ms = [
        Misjudgment(f"c{i}", k, t, p, 0.9 if k == "FP" else 0.1 * i, i)
        for i, (k, t, p) in enumerate(model_free)
    ]
    groups = group_misjudgments(ms, top=2)
    assert [g for g, _ in groups] == ["FN-poly-p1.00", "FP-mono-p0.00"]
    assert [m.frame_id for m in groups[0][1]] == ["c2", "c4", "c5"]  # most confident first


def _operator(x_token: str = Header("")) -> None:
    if x_token != "secret":
        raise HTTPException(401, "operator token required")


async def test_api_lists_models_drift_and_serves_listed_heatmaps(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    entry = registry.register(model_bytes[0], "test", {"f1": 0.5}, activate=True)
    other = registry.register(model_bytes[1], "test")
    model = registry.load(entry.version, device="cpu")
    cells = _cells()
    misjudged = find_misjudgments(model, cells, threshold=0.0)  # every intact cell is an FP
    assert {m.kind for m in misjudged} == {"FP"} and len(misjudged) == 12
    groups = explain(model, cells, explanations_root(tmp_path) / entry.version, per_group=2)
    assert [g.count for g in groups] == sorted((g.count for g in groups), reverse=True)
    monitor = DriftMonitor(AlarmLog(), model=entry.version)
    monitor.observe("el-1", 0, ServedVerdict("c1", "fail", "defective", 0.9, entry.version))
    monitor.write(tmp_path / "inspection" / "drift.json")

    app = FastAPI()
    app.include_router(create_inspection_router(tmp_path, [Depends(_operator)]))
    transport = httpx.ASGITransport(app=app)
    base = "http://node"
    async with httpx.AsyncClient(transport=transport, base_url=base) as anonymous:
        assert (await anonymous.get("/v1/inspection/models")).status_code == 401
    async with httpx.AsyncClient(
        transport=transport, base_url=base, headers={"x-token": "secret"}
    ) as client:
        listed = (await client.get("/v1/inspection/models")).json()
        assert [m["active"] for m in listed] == [True, False]
        one = (await client.get(f"/v1/inspection/models/{entry.version[:8]}")).json()
        assert one["metrics"] == {"f1": 0.5}
        assert (await client.get("/v1/inspection/models/zzzzzz")).status_code == 400
        drift = (await client.get("/v1/inspection/drift")).json()
        assert drift["stations"][0]["samples"] == 1
        summary = (await client.get("/v1/inspection/explanations")).json()
        expected = len(find_misjudgments(model, cells))  # at the default threshold
        assert summary[0]["model_version"] == entry.version and summary[0]["misjudged"] == expected
        url = f"/v1/inspection/explanations/{entry.version[:12]}"
        index = (await client.get(url)).json()
        png = index["groups"][0]["examples"][0]["png"]
        got = await client.get(f"{url}/{png}")
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        width, height = Image.open(io.BytesIO(got.content)).size
        assert width > 2 * 40 and height > 40  # original | map | colour bar, scaled up
        for bad in ("index.json", "..%2Findex.json", "nothing.png"):
            assert (await client.get(f"{url}/{bad}")).status_code == 404
        missing = await client.get(f"/v1/inspection/explanations/{other.version}")
        assert missing.status_code == 404


def test_find_misjudgments_uses_the_fifty_percent_rule(model_bytes: tuple[bytes, bytes]) -> None:
    model = OnnxClassifier(model_bytes[0], device="cpu")
    cells = _cells(8)
    everything_fails = find_misjudgments(model, cells, threshold=0.0)
    nothing_fails = find_misjudgments(model, cells, threshold=1.01)
    labels = cells.labels(2)
    assert len(everything_fails) == int((labels == 0).sum())
    assert len(nothing_fails) == int((labels == 1).sum())
    assert {m.kind for m in nothing_fails} == {"FN"}
