"""JSON ingests are held whole in memory (body and parsed rows), so a process reads a few
at once (`JSON_INGESTS_AT_ONCE`): a managed host's tenants share the process, and each
tenant's staff could hold 32 at once. One more is refused with 429 before a byte of it
is read, naming the way for many rows (CSV or JSON Lines, spooled to disk); CSV is
taken meanwhile, and JSON again once a place is free.

The node's real operator app over a real node directory; the places are taken by the
test, as ingests in flight would hold them.
"""

from __future__ import annotations

import asyncio

import httpx

from qdspace.node.api import app as api_app
from qdspace.node.api.app import create_app
from qdspace.node.context import NodeContext

ROW = {
    "inspection_id": "EL-1", "station": "EL-1", "inspected_at": "2026-11-01T10:00:00Z",
    "verdict": "OK", "order_id": "PO-1",
}  # fmt: skip


def test_a_json_ingest_past_the_places_is_refused_and_csv_is_still_taken(
    node: NodeContext,
) -> None:
    app = create_app(node)
    auth = {"Authorization": f"Bearer {node.operator_token}"}

    async def post(json: object = None, csv: str | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            if csv is None:
                return await client.post("/v1/ingest/inspection", headers=auth, json=json)
            headers = {**auth, "content-type": "text/csv"}
            return await client.post("/v1/ingest/inspection", headers=headers, content=csv)

    places = api_app._json_ingests
    held = [places.acquire(blocking=False) for _ in range(api_app.JSON_INGESTS_AT_ONCE)]
    assert all(held)
    try:
        busy = asyncio.run(post(json={"rows": [ROW]}))
        assert busy.status_code == 429, busy.text
        assert "text/csv" in busy.json()["detail"]
        csv = "inspection_id,station,inspected_at,verdict,order_id\n"
        csv += "EL-2,EL-1,2026-11-01T10:00:01Z,OK,PO-1\n"
        taken = asyncio.run(post(csv=csv))
        assert taken.status_code == 200 and taken.json()["accepted"] == 1, taken.text
    finally:
        for _ in held:
            places.release()
    again = asyncio.run(post(json={"rows": [ROW]}))
    assert again.status_code == 200 and again.json()["accepted"] == 1, again.text
