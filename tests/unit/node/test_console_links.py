"""Ids a peer chose go into the console's links as one path segment each.

A case id, an action id, a trace report named in a case and an agreement id are often a
peer's text. Jinja's ``urlencode`` leaves ``/`` as it is, so a case id of
``../contracts/negotiate`` made the case page's Accept button post to another page of
the console (the operator's session and CSRF token with it)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from qdspace.node.console.render import Console

HOSTILE = "../contracts/negotiate?x=1#"


def _render(template: str, **values: Any) -> str:
    console = Console.build(ctx=None, root="/console")  # type: ignore[arg-type]
    return console.env.get_template(template).render(root="/console", nav=(), **values)


def test_a_peers_case_id_cannot_point_a_link_or_a_form_at_another_page() -> None:
    case = SimpleNamespace(
        case_id=HOSTILE, trace_report_id="../../ledger/proof", subject="s", opener_id="a",
        receiver_id="b", batch_ids=(), description="", actions=(), events=(), state="ACCEPTED",
    )  # fmt: skip
    action = SimpleNamespace(action_id="../../logout", state="OPEN", owner_id="me")
    page = _render(
        "case.html", c=case, names={"a": "a", "b": "b"}, moves=["accept"], me="me",
        actions=[action], csrf="t",
    )  # fmt: skip
    encoded = "..%2Fcontracts%2Fnegotiate%3Fx%3D1%23"
    assert f'action="/console/investigations/{encoded}/accept"' in page
    assert 'href="/console/traces/..%2F..%2Fledger%2Fproof"' in page
    targets = re.findall(r'(?:href|action|hx-get)="([^"]*)"', page)
    # no dot-segment a browser would resolve, no query or fragment of the peer's
    ours = [t for t in targets if t.startswith("/console")]
    assert not [t for t in ours if re.search(r"/\.\.(/|$)|[?#]", t)], targets
    listing = _render(
        "investigations.html", cases=[case], overdue=[], alerts=[], case_count=1, today="",
    )  # fmt: skip
    assert f'href="/console/investigations/{encoded}"' in listing
