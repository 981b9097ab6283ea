"""A hostile member's text in the console, in a real browser (headless Debian Chromium).

Every string a peer controls reaches some console page: a case's subject, description,
batch ids, action ids and titles; an agreement's termination reason; a trace report's
members, keys, ids and reasons. Cellex (a member gone hostile) writes markup there:

- a case it opens against SunArc and an agreement it ends with SunArc go the way a peer's
  text goes, through Cellex's own node, signed, to SunArc's node over gRPC;
- a trace report is planted straight into SunArc's store (a peer's words reach a report
  through the trace's ``Trace/Investigate`` answers, a long way to drive here): it is the
  page whose graph is SVG built on the server by string formatting (`trace_graph`).

SunArc's operator then opens each page in Chromium. On every one no script of the peer's
ran, no element or event handler of its markup exists, no link leaves for a
``javascript:`` URL, the Content Security Policy reported nothing (so escaping held; the
policy was not what stopped it) and the text is shown as written. The policy itself is
pinned too: its header forbids inline script and framing, Chromium refuses an inline
script and handler put into a console page, a console page opens in no frame (not even
one of the console's own), and another site's form cannot move a case (the session
cookie is ``SameSite=Strict``, an ``Origin`` not the node's is refused, and a change
needs the session's CSRF token: `test_console_abuse`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from sqlalchemy import create_engine

from qdspace.connector.investigation import CaseKind, CaseTerms, Severity, opening
from qdspace.connector.investigation_wire import SealedEvent, sign_event
from qdspace.connector.trace_store import TraceStore
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_to_proto

from .chromium import launched, playwright_or_skip
from .conftest import CELLEX_ORDER, ingest_sample, negotiate, ok, wait_for

pytestmark = pytest.mark.integration

sync_api = playwright_or_skip()

#: a peer's free text: a script, an image and an SVG with handlers, an element with an id,
#: and the ends of the elements whose content is not markup (title, textarea, style)
TEXT = (
    "<script>window.__pwned='script'</script>"
    "<img src=x onerror=\"window.__pwned='img'\">"
    "<svg onload=\"window.__pwned='svg'\"></svg>"
    "\"'><b id=injected>bold</b></title></textarea></style>"
)
#: a peer's id (at most 64 characters, the trace's limit): out of an attribute, a handler
ID = "\"'><img src=x onerror=window.__pwned='id'>"
#: a peer's id where the console makes a link of it
JS = "javascript:window.__pwned='href'"
#: a case id a modified node chooses: a scheme, a query and a fragment of its own
CASE_ID = "javascript:window.__pwned='case'?\"'><img src=x onerror=window.__pwned=1>#top"
NOTIFY = "/qdspace.v1.Notification/Notify"
#: what the page reports: a peer's script run, its markup as elements, a policy violation
PROBE = """() => ({
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  violations: window.__violations,
  injected: document.querySelectorAll('#injected, iframe, object, embed').length,
  handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes]
    .filter(a => a.name.toLowerCase().startsWith('on')).map(a => e.tagName + ' ' + a.name)),
  scripts: [...document.scripts].map(s => s.src),
  schemes: [...document.querySelectorAll('a[href], area[href], form[action]')]
    .map(e => new URL(e.getAttribute(e.tagName === 'FORM' ? 'action' : 'href'),
                      location.href).protocol),
  title: document.title,
})"""
#: recorded in every document before its own scripts run
WATCH = """window.__violations = [];
document.addEventListener('securitypolicyviolation',
  e => window.__violations.push(e.violatedDirective + ' ' + (e.sample || e.blockedURI)));"""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("console-hostile"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )
    network.create()
    network.start()
    try:
        ingest_sample(network, "cellex")
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def case_id(net: LocalNetwork) -> str:
    """A case Cellex opens against SunArc, its text the peer's markup."""
    due = (date.today() + timedelta(days=7)).isoformat()
    body = {
        "peer": "sunarc",
        "severity": "MAJOR",
        "subject": TEXT,
        "description": TEXT,
        "batch_ids": [ID, JS],
        "trace_report_id": JS,
        "actions": [
            {"action_id": ID, "kind": "CONTAINMENT", "owner": "sunarc", "due": due, "title": TEXT}
        ],
    }
    with net["cellex"].client() as supplier:
        case = str(ok(supplier.post("/v1/investigations", json=body))["case_id"])
    with net["sunarc"].client() as oem:
        wait_for("the case at SunArc", lambda: oem.get(f"/v1/investigations/{case}").is_success)
    return case


@pytest.fixture(scope="module")
def chosen_case(net: LocalNetwork) -> str:
    """A case Cellex's node opens against SunArc under an id of its choosing: OPEN and SEND
    signed with Cellex's key, sent to SunArc's Notification service the way a modified
    node would (the REST API names a case itself)."""
    cellex, sunarc = net["cellex"].keys(), net["sunarc"].keys()
    terms = CaseTerms(
        CaseKind.INVESTIGATION,
        cellex.identity.member_id,
        sunarc.identity.member_id,
        Severity.MAJOR,
        subject=TEXT,
    )

    async def send() -> None:
        async with open_channel(cellex, net["sunarc"].grpc_address, "sunarc") as channel:
            notify = channel.unary_unary(
                NOTIFY, request_serializer=None, response_deserializer=None
            )
            for event in opening(CASE_ID, terms, datetime.now(UTC)):
                signed = sign_event(event, cellex.signing_key)
                body = SealedEvent(event.canonical_bytes(), signed.signature)
                note = Notification(
                    f"n-{uuid.uuid4().hex}", cellex.identity.member_id, datetime.now(UTC), body
                )
                await notify(notification_to_proto(note).SerializeToString(), timeout=20)

    try:  # on a thread of its own: Playwright's sync API holds this one's event loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, send()).result()
    except grpc.aio.AioRpcError as err:
        raise AssertionError(f"SunArc refused the case: {err.code()} {err.details()}") from None
    with net["sunarc"].client() as oem:
        path = f"/v1/investigations/{quote(CASE_ID, safe='')}"
        wait_for("the case at SunArc", lambda: oem.get(path).is_success)
    return CASE_ID


@pytest.fixture(scope="module")
def agreement_id(net: LocalNetwork) -> str:
    """An agreement SunArc made with Cellex, which Cellex ends giving the peer's markup as
    its reason."""
    with net["sunarc"].client() as oem:
        agreement = str(
            negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])["agreement_id"]
        )
    with net["cellex"].client() as supplier:
        ok(supplier.post(f"/v1/contracts/agreements/{agreement}/terminate", json={"reason": TEXT}))
    with net["sunarc"].client() as oem:
        wait_for(
            "the termination at SunArc",
            lambda: not ok(oem.get(f"/v1/contracts/agreements/{agreement}"))["active"],
        )
    return agreement


@pytest.fixture(scope="module")
def trace_id(net: LocalNetwork) -> str:
    """A finished trace whose report names the peer's markup everywhere a peer's answer
    puts text (planted in SunArc's store: module docstring)."""
    trace = f"t-{uuid.uuid4().hex[:12]}"
    step = {"member": TEXT, "level": ID, "ids": [ID, JS]}
    cause = {
        "rank": 1, "member": TEXT, "tier": 1, "key": TEXT, "kind": TEXT, "significant": True,
        "score": 0.9, "strength": 0.9, "adjusted_p": 0.01, "effect": 1.0,
        "confidence": {"data": 0.9}, "evidence": [TEXT], "path": [step], "reported_by": TEXT,
    }  # fmt: skip
    report = {
        "trace_id": trace, "selection": {"batch": ID}, "implicated": [TEXT], "partial": True,
        "missing": [{"member": TEXT, "batch_ids": [ID], "reason": TEXT, "reported_by": TEXT}],
        "responsibility": {TEXT: 1.0}, "timings_ms": {"total": 1.0}, "causes": [cause],
    }  # fmt: skip
    engine = create_engine(net["sunarc"].db_url)
    try:
        store = TraceStore(engine)
        now = datetime.now(UTC)
        store.start(trace, {"batch": ID}, now)
        store.finish(trace, json.dumps(report).encode(), now)
    finally:
        engine.dispose()
    return trace


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched(sync_api) as chromium:
        yield chromium


@pytest.fixture
def page(net: LocalNetwork, browser: Any) -> Iterator[Any]:
    """SunArc's operator, logged in to its console."""
    context = browser.new_context(ignore_https_errors=True)
    context.add_init_script(WATCH)
    opened = context.new_page()
    member = net["sunarc"]
    opened.goto(f"{member.api_url}/console/login")
    opened.get_by_label("Operator token").fill(member.token)
    opened.get_by_role("button", name="Log in").click()
    opened.wait_for_url("**/console/")
    try:
        yield opened
    finally:
        context.close()


def visit(page: Any, member: MemberProcess, path: str) -> Any:
    """Opens a console page; its response, once the page and its images have loaded."""
    response = page.goto(f"{member.api_url}/console{path}")
    assert response is not None and response.status < 500, path
    return response


def inert(page: Any, origin: str) -> dict[str, Any]:
    """What the page holds of the peer's markup: nothing of it may run or be an element."""
    seen: dict[str, Any] = page.evaluate(PROBE)
    assert seen["pwned"] is None, seen
    assert seen["violations"] == [], seen  # escaping held: the policy had nothing to stop
    assert seen["injected"] == 0 and seen["handlers"] == [], seen
    assert all(s.startswith(f"{origin}/console/static/") for s in seen["scripts"]), seen
    assert set(seen["schemes"]) <= {"https:"}, seen
    return seen


def pinned_headers(response: Any) -> None:
    """The policy a console page is served with: no inline script, no framing."""
    headers = response.headers
    policy = {
        d.split()[0]: d.split()[1:]
        for d in headers["content-security-policy"].split(";")
        if d.strip()
    }
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert "object-src" not in policy  # default-src 'self' covers plugins
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_a_peers_case_text_is_shown_as_text_and_never_runs(
    net: LocalNetwork, page: Any, case_id: str
) -> None:
    sunarc = net["sunarc"]
    listing = visit(page, sunarc, "/investigations")
    pinned_headers(listing)
    row = page.locator(f'tr[data-case="{case_id}"]')
    sync_api.expect(row).to_contain_text(TEXT)
    inert(page, sunarc.api_url)
    shown = visit(page, sunarc, f"/investigations/{quote(case_id, safe='')}")
    pinned_headers(shown)
    assert inert(page, sunarc.api_url)["title"] == f"Case {TEXT} · qdspace console"
    sync_api.expect(page.locator("h1")).to_have_text(TEXT)
    sync_api.expect(page.locator("section[aria-labelledby=case-h] p")).to_have_text(TEXT)
    sync_api.expect(page.locator("dl.facts")).to_contain_text(f"{ID}, {JS}")
    action = page.locator("#actions tbody tr").first
    sync_api.expect(action).to_contain_text(ID)
    sync_api.expect(action).to_contain_text(TEXT)
    assert action.get_attribute("data-action") == ID
    # the trace the peer named is a link on this console, however it is spelled
    link = page.get_by_role("link", name=JS)
    assert link.get_attribute("href") == f"/console/traces/{quote(JS, safe='')}"


def test_a_case_id_of_the_peers_choosing_stays_one_case_through_its_links_and_moves(
    net: LocalNetwork, page: Any, chosen_case: str
) -> None:
    """The id is one path segment in every link, form and redirect: before, acknowledging
    the case sent the browser to the peer's ``?`` query and ``#`` fragment, another case."""
    sunarc = net["sunarc"]
    own = f"/console/investigations/{quote(chosen_case, safe='')}"
    visit(page, sunarc, "/investigations")
    inert(page, sunarc.api_url)
    (row,) = [
        r
        for r in page.locator("#cases tbody tr").all()
        if r.get_attribute("data-case") == chosen_case
    ]
    link = row.get_by_role("link")
    assert link.get_attribute("href") == own
    link.click()
    page.wait_for_load_state()
    inert(page, sunarc.api_url)
    sync_api.expect(page.locator("#case-state")).to_have_text("RECEIVED")
    sync_api.expect(page.locator("dl.facts code")).to_have_text(chosen_case)
    assert page.locator("form.move").get_attribute("action") == f"{own}/ack"
    page.get_by_role("button", name="Acknowledge").click()
    page.wait_for_load_state()
    inert(page, sunarc.api_url)
    assert page.url == f"{sunarc.api_url}{own}", page.url
    sync_api.expect(page.locator("#case-state")).to_have_text("ACKNOWLEDGED")


def test_a_peers_termination_reason_is_shown_as_text(
    net: LocalNetwork, page: Any, agreement_id: str
) -> None:
    sunarc = net["sunarc"]
    shown = visit(page, sunarc, f"/contracts/agreements/{quote(agreement_id, safe='')}")
    pinned_headers(shown)
    inert(page, sunarc.api_url)
    sync_api.expect(page.locator("dl.facts").first).to_contain_text(f": {TEXT}")
    contracts = visit(page, sunarc, "/contracts")
    pinned_headers(contracts)
    inert(page, sunarc.api_url)


def test_a_trace_report_of_peers_markup_draws_as_text(
    net: LocalNetwork, page: Any, trace_id: str
) -> None:
    sunarc = net["sunarc"]
    shown = visit(page, sunarc, f"/traces/{trace_id}")
    pinned_headers(shown)
    inert(page, sunarc.api_url)
    graph = page.locator("svg.trace-graph")
    sync_api.expect(graph.locator("g.cause")).to_have_attribute("data-member", TEXT)
    # the boxes show the first 34 characters of each line: as text, not markup
    labels = graph.locator("text").all_text_contents()
    assert f"#1 {TEXT} via {TEXT}"[:34] in labels, labels
    assert f"{TEXT} {ID}"[:34] in labels, labels
    sync_api.expect(page.locator("#causes tbody")).to_contain_text(TEXT)
    sync_api.expect(page.locator("#shares")).to_contain_text(TEXT)
    sync_api.expect(page.locator("p.error[role=alert]")).to_contain_text(f"{TEXT} did not answer")
    visit(page, sunarc, "/traces")
    inert(page, sunarc.api_url)
    sync_api.expect(page.locator("#traces")).to_contain_text(f"batch {ID}")


def test_an_id_echoed_by_an_error_page_is_text(net: LocalNetwork, page: Any) -> None:
    sunarc = net["sunarc"]
    shown = visit(page, sunarc, f"/contracts/agreements/{quote(ID, safe='')}")
    assert shown.status == 404
    pinned_headers(shown)
    inert(page, sunarc.api_url)
    sync_api.expect(page.locator("p.error")).to_contain_text(ID)


def test_the_policy_refuses_an_inline_script_put_into_a_console_page(
    net: LocalNetwork, page: Any
) -> None:
    """Were a peer's markup ever to reach a page unescaped, it still could not run."""
    sunarc = net["sunarc"]
    visit(page, sunarc, "/")
    page.evaluate(
        """() => new Promise(done => {
          const box = document.createElement('div');
          box.innerHTML = `<img src="x" onerror="window.__pwned='handler'">`;
          box.querySelector('img').addEventListener('error', () => setTimeout(done, 50));
          const script = document.createElement('script');
          script.textContent = "window.__pwned = 'inline'";
          document.body.append(box, script);
        })"""
    )
    seen = page.evaluate(PROBE)
    assert seen["pwned"] is None, seen
    directives = {v.split()[0] for v in seen["violations"]}
    assert directives == {"script-src-attr", "script-src-elem"}, seen


def test_a_console_page_opens_in_no_frame(net: LocalNetwork, page: Any, case_id: str) -> None:
    """Not even in one of the console's own pages, where the session cookie goes along: a
    page that frames the console (to have its buttons clicked through a decoy) gets
    Chromium's error page in the frame."""
    sunarc = net["sunarc"]
    target = f"{sunarc.api_url}/console/investigations/{quote(case_id, safe='')}"
    visit(page, sunarc, "/")
    framed = page.evaluate(
        """src => new Promise(done => {
          const frame = document.createElement('iframe');
          frame.addEventListener('load', () => {
            const inner = frame.contentDocument;  // null: not the console's document
            done(inner === null ? null : inner.querySelectorAll('#case-state').length);
          });
          frame.src = src;
          document.body.append(frame);
        })""",
        target,
    )
    assert framed is None, framed
    child = next(f for f in page.frames if f is not page.main_frame)
    assert child.url.startswith("chrome-error://"), child.url


def test_another_sites_form_cannot_move_a_case(net: LocalNetwork, page: Any, case_id: str) -> None:
    sunarc = net["sunarc"]
    target = f"{sunarc.api_url}/console/investigations/{quote(case_id, safe='')}/ack"
    evil = "https://evil.example/"
    forged = (
        f'<form method="post" action="{target}"><input name="note" value="forged"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    page.context.route(
        f"{evil}*", lambda route: route.fulfill(status=200, content_type="text/html", body=forged)
    )
    with page.expect_navigation(url=target):
        page.goto(evil, wait_until="commit")
    # the SameSite=Strict cookie stays home (a cookie sent anyway: the Origin is refused)
    answer = page.locator("body").text_content() or ""
    assert answer in ("log in first", "cross-origin request refused"), answer
    with sunarc.client() as oem:
        assert ok(oem.get(f"/v1/investigations/{case_id}"))["state"] == "RECEIVED"
