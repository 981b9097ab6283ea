"""The trace graph names who said a relayed level, and escapes what a peer wrote."""

from __future__ import annotations

from qdspace.node.console.trace_graph import trace_svg


def test_a_relayed_cause_is_drawn_with_who_reported_it_and_peer_text_is_escaped() -> None:
    report = {
        "causes": [
            {"rank": 1, "member": "siwafer", "reported_by": "cellex", "key": "<b>x</b>",
             "significant": True, "score": 0.9, "path": []},
            {"rank": 2, "member": "cellex", "key": "PECVD-1/vacuum", "significant": False,
             "score": 0.2, "path": []},
        ]
    }  # fmt: skip
    svg = trace_svg(report)
    assert "#1 siwafer via cellex: &lt;b&gt;x&lt;/b&gt;" in svg
    assert "#2 cellex: PECVD-1/vacuum" in svg and "<b>" not in svg
