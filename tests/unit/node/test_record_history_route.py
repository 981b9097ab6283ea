"""``POST /v1/contracts/records/history``: every version of one of our QDM records.

Through the node's real operator app (a real node directory on SQLite, real HTTP over
ASGI): an auditor reads what a record said before each correction and withdrawal.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from qdspace.node.api.app import create_app
from qdspace.node.context import NodeContext

from .conftest import operator_post, post_json

PATH = "/v1/contracts/records/history"
KEY = {"inspection_id": "EL-HIST-1"}


def _inspection(**changes: object) -> dict[str, object]:
    row = {
        "inspection_id": "EL-HIST-1",
        "station": "EL-1",
        "inspected_at": "2026-11-02T08:00:00+01:00",
        "verdict": "pass",
        "score": 0.1,
    }
    row.update(changes)
    return row


def test_the_versions_of_a_corrected_and_withdrawn_record(node: NodeContext) -> None:
    node.store.ingest_rows("inspection", [(1, _inspection())])
    node.store.ingest_rows("inspection", [(1, _inspection(verdict="fail", score=0.8))])
    withdrawn = post_json(node, "/v1/contracts/withdrawals", {"kind": "inspection", "key": KEY})
    assert withdrawn.status_code == 200, withdrawn.text

    answer = post_json(node, PATH, {"kind": "inspection", "key": KEY})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert [v["version"] for v in found] == [1, 2, 3]
    assert [v["replaced_by"] for v in found] == ["correction", "withdrawal", None]
    assert [(v["content"]["verdict"], v["content"]["score"]) for v in found] == [
        ("pass", 0.1),
        ("fail", 0.8),
        ("fail", 0.8),
    ]
    assert found[0]["content"]["inspected_at"].startswith("2026-11-02T07:00:00")
    assert found[0]["withdrawn_at"] is None and found[2]["withdrawn_at"] is not None
    assert found[2]["replaced_at"] is None and found[0]["replaced_at"] is not None


def test_an_unknown_record_or_a_wrong_key_is_a_4xx_saying_why(node: NodeContext) -> None:
    answer = post_json(node, PATH, {"kind": "inspection", "key": {"inspection_id": "none"}})
    assert answer.status_code == 404, answer.text
    assert "no inspection record" in answer.text
    answer = post_json(node, PATH, {"kind": "inspection", "key": {"serial": "x"}})
    assert 400 <= answer.status_code < 500, answer.text
    assert "inspection_id" in answer.text
    answer = post_json(node, PATH, {"kind": "nothing", "key": {"a": "b"}})
    assert 400 <= answer.status_code < 500, answer.text
    assert "unknown kind" in answer.text


def test_a_caller_without_the_operators_token_or_with_a_hostile_body_is_refused(
    node: NodeContext,
) -> None:
    """The route is the operator's: no token (a member or anyone else reaching the
    listener) is a 401 that reads nothing; a key of the wrong shape, a huge one, a NaN
    or a number where text goes is a 4xx, never a 500."""

    async def anonymous() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post(PATH, json={"kind": "inspection", "key": KEY})

    assert asyncio.run(anonymous()).status_code == 401
    bodies: list[bytes] = [
        json.dumps({"kind": "inspection", "key": {"inspection_id": "x" * 1_000_000}}).encode(),
        json.dumps({"kind": "inspection", "key": {f"k{i}": "v" for i in range(10_000)}}).encode(),
        b'{"kind": "inspection", "key": {"inspection_id": NaN}}',
        json.dumps({"kind": "inspection", "key": {"inspection_id": 5}}).encode(),
        json.dumps({"kind": ["inspection"], "key": KEY}).encode(),
        json.dumps({"kind": "inspection", "key": "EL-HIST-1"}).encode(),
        b'{"kind": "inspection", "key": ',
    ]
    for body in bodies:
        answer = asyncio.run(operator_post(node, PATH, body))
        assert 400 <= answer.status_code < 500, (body[:80], answer.status_code, answer.text[:200])
