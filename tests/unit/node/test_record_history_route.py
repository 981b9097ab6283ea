"""``POST /v1/contracts/records/history``: every version of one of our QDM records.

Through the node's real operator app (a real node directory on SQLite, real HTTP over
ASGI): an auditor reads what a record said before each correction and withdrawal.
"""

from __future__ import annotations

from qdspace.node.context import NodeContext

from .conftest import post_json

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
