"""A hostile caller against every console route, on real node processes over TLS.

SunArc's console is driven with plain httpx, logged in like a browser (the session
cookie and the CSRF token of the page), and abused: unknown and excess series in the
live stream, oversized, non-JSON and non-document drops, bad and foreign agreement,
case, trace and model ids, path tricks on the heatmap route, every state-changing form
without and with a forged CSRF token and from another origin, Cellex's session cookie,
huge query parameters. Every answer is a 4xx that says what was wrong (an HTML page or
fragment), never a 5xx or a traceback. The regulator listener's read-only console is
abused the same way: the operator token is no regulator credential, and no operator
page or form exists there.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import date, timedelta

import httpx
import pytest

from qdspace.node.api.regulator_auth import issue_credential
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec

from .conftest import ok

pytestmark = pytest.mark.integration

CSRF = re.compile(r'data-csrf="([^"]+)"')


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("console-abuse"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("regulator", "regulator"),
        ],
    )
    network.create()
    network.start()
    try:
        yield network
    finally:
        network.stop()


def browser_client(member: MemberProcess) -> httpx.Client:
    return member.client(token="")  # no bearer token: what a browser sends


def login(member: MemberProcess) -> tuple[httpx.Client, str]:
    """A client holding a console session, and the session's CSRF token."""
    client = browser_client(member)
    try:
        answer = client.post("/console/login", data={"token": member.token})
        assert answer.status_code == 303, answer.text
        page = client.get("/console/")
        assert page.status_code == 200, page.text[:500]
        match = CSRF.search(page.text)
        assert match is not None
    except BaseException:
        client.close()  # (not left to the collector, to warn in another test)
        raise
    return client, match.group(1)


def refused(response: httpx.Response, *statuses: int) -> str:
    """The answer is one of ``statuses`` (all 4xx) and no traceback; its text."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert 400 <= response.status_code < 500
    assert "Traceback" not in response.text and 'File "' not in response.text
    return response.text


@pytest.fixture(scope="module")
def sunarc(net: LocalNetwork) -> Iterator[tuple[httpx.Client, str]]:
    client, csrf = login(net["sunarc"])
    try:
        yield client, csrf
    finally:
        client.close()


@pytest.fixture(scope="module")
def case_id(net: LocalNetwork) -> str:
    due = (date.today() + timedelta(days=7)).isoformat()
    body = {
        "peer": "cellex",
        "severity": "MAJOR",
        "subject": "abuse test case",
        "actions": [{"action_id": "A1", "kind": "CONTAINMENT", "owner": "cellex", "due": due}],
    }
    with net["sunarc"].client() as client:
        return str(ok(client.post("/v1/investigations", json=body))["case_id"])


def test_the_live_stream_refuses_unknown_excess_and_huge_series(
    sunarc: tuple[httpx.Client, str],
) -> None:
    client, _ = sunarc
    stream = "/console/spc/stream"
    assert "not a series" in refused(client.get(stream, params={"series": "own:nope"}), 404)
    assert "printable" in refused(client.get(stream, params={"series": "sub:x\u2028"}), 400)
    refused(client.get(stream), 400)  # no series at all
    refused(client.get(stream, params=[("series", f"own:s{i}") for i in range(40)]), 400)
    refused(client.get(stream, params={"series": "own:" + "x" * 5000}), 400)
    refused(client.get(stream, params={"series": "own:a\x00b"}), 400)


def test_the_xbar_r_view_refuses_bad_subgroup_sizes_and_series_not_followed(
    net: LocalNetwork, sunarc: tuple[httpx.Client, str]
) -> None:
    client, _ = sunarc
    station = f"XBAR-{uuid.uuid4().hex[:6]}"
    rows = [
        {
            "inspection_id": f"{station}-{i:03d}",
            "station": station,
            "inspected_at": f"2026-12-03T06:00:{i:02d}Z",
            "verdict": "pass",
            "score": 0.1 + 0.01 * (i % 3),
        }
        for i in range(11)
    ]
    with net["sunarc"].client() as operator:
        ok(operator.post("/v1/ingest/inspection", json={"rows": rows}))
    key = f"own:{station}"
    stream = "/console/spc/stream"
    for bad in ("1", "11", "0", "-5", "x", "9" * 5000, "", "\u0663", "5.0", "+5"):
        answer = client.get(stream, params={"series": key, "xbar": f"{bad}:{key}"})
        assert "subgroup size must be 2 to 10" in refused(answer, 400), bad[:10]
    assert "is not one of the stream" in refused(
        client.get(stream, params={"series": key, "xbar": "5:own:elsewhere"}), 400
    )
    refused(client.get(stream, params={"series": key, "xbar": [f"4:{key}", f"5:{key}"]}), 400)
    # a good one streams the X-bar-R state: 11 values in subgroups of 4, 3 left waiting
    with client.stream("GET", stream, params={"series": key, "xbar": f"4:{key}"}) as answer:
        assert answer.status_code == 200
        data = next(line for line in answer.iter_lines() if line.startswith("data:"))
    state = json.loads(data.removeprefix("data:"))
    assert state["n"] == 11
    assert (state["xbar"]["n"], state["xbar"]["groups"], state["xbar"]["pending"]) == (4, 2, 3)
    assert len(state["xbar"]["x"]) == len(state["xbar"]["r"]) == 2


def test_drops_that_are_too_large_not_json_or_no_document_are_4xx(
    sunarc: tuple[httpx.Client, str],
) -> None:
    client, csrf = sunarc
    headers = {"x-csrf-token": csrf, "content-type": "application/json"}
    verify = "/console/ledger/verify"
    refused(client.post(verify, content=b"x" * (2 << 20), headers=headers), 413)
    assert "not a JSON document" in refused(
        client.post(verify, content=b"\xff\xfe not json", headers=headers), 400
    )
    assert "not a proof or passport" in refused(
        client.post(verify, content=b"[1, 2, 3]", headers=headers), 400
    )
    refused(client.post(verify, content=b'{"type": "something-else"}', headers=headers), 422)
    refused(client.post(verify, content=b'{"type": "qdspace.proof/1"}', headers=headers), 400, 422)
    deep = b"[" * 5000 + b"]" * 5000
    refused(client.post(verify, content=deep, headers=headers), 400)
    # deeper still, and not labelled JSON (past the API's JSON depth gate): it took a
    # managed host down (its recursion limit raised by py_ecc, the decoder's C recursion
    # overflowed the stack); now it is refused, and the node serves on
    plain = {"x-csrf-token": csrf, "content-type": "text/plain"}
    bomb = b"[" * 300_000
    assert "not a JSON document" in refused(client.post(verify, content=bomb, headers=plain), 400)
    assert client.get("/console/").status_code == 200


def test_bad_and_foreign_ids_are_4xx_pages(sunarc: tuple[httpx.Client, str], case_id: str) -> None:
    client, _ = sunarc
    foreign = f"agr-{uuid.uuid4().hex}"
    for path, statuses in [
        (f"/console/contracts/agreements/{foreign}", (404,)),
        (f"/console/contracts/agreements/{foreign}/verify", (404, 503)),
        ("/console/contracts/agreements/" + "a" * 300, (400,)),
        ("/console/contracts/agreements/%E2%80%A8x", (400,)),
        (f"/console/investigations/qc-{uuid.uuid4().hex}", (404,)),
        ("/console/investigations/" + "c" * 300, (400,)),
        ("/console/traces/tr-nothing", (404,)),
        ("/console/traces/" + "t" * 100, (400,)),
        ("/console/traces/tr-nothing/panel", (404,)),
        # a dot segment is no id (`%2e%2e` reaches the route as `..`), a blank one neither
        ("/console/investigations/%2e%2e", (400,)),
        ("/console/contracts/agreements/%2E", (400,)),
        ("/console/traces/%2e%2e/panel", (400,)),
        ("/console/contracts/agreements/%20", (400,)),
        ("/console/ledger/proof?kind=agreement&ref_id=" + foreign, (404,)),
        ("/console/ledger/proof?kind=nonsense&ref_id=x", (404,)),
        ("/console/ledger/proof.json?kind=agreement&ref_id=%09", (400,)),
        ("/console/ledger/proof?kind=agreement&ref_id=" + "r" * 20_000, (400,)),
        ("/console/spc/stream?series=" + "s" * 20_000, (400,)),
    ]:
        text = refused(client.get(path), *statuses)
        assert "Something went wrong" in text or "Error" in text, path
    # a move the case's state does not allow, an unknown move, another's action
    csrf = CSRF.search(client.get(f"/console/investigations/{case_id}").text)
    assert csrf is not None
    form = {"csrf": csrf.group(1)}
    refused(client.post(f"/console/investigations/{case_id}/close", data=form), 409)
    refused(client.post(f"/console/investigations/{case_id}/ack", data=form), 403, 409)
    refused(client.post(f"/console/investigations/{case_id}/explode", data=form), 404)
    done = f"/console/investigations/{case_id}/actions/A1/done"
    refused(client.post(done, data=form), 403, 409)
    refused(
        client.post(f"/console/investigations/{case_id}/actions/ZZ/done", data=form), 403, 404, 409
    )
    refused(client.post("/console/traces/start", data={**form, "batch": "NO-SUCH"}), 400)
    refused(client.post("/console/traces/start", data={**form, "batch": ""}), 400)
    refused(client.post("/console/federation/deploy", data={**form, "version": "../x"}), 400)
    refused(client.post("/console/federation/deploy", data={**form, "version": "ab" * 8}), 404)


def test_heatmap_path_tricks_are_refused(sunarc: tuple[httpx.Client, str]) -> None:
    client, _ = sunarc
    for trick in [
        "/console/inspection/heatmaps/abcdef/index.json",
        "/console/inspection/heatmaps/abcdef/..%2F..%2Fnode.json",
        "/console/inspection/heatmaps/..%2F..%2F/operator.token",
        "/console/inspection/heatmaps/abcdef/%2Fetc%2Fpasswd",
        "/console/inspection/heatmaps/../../operator.token",
        "/console/inspection/heatmaps/abcdef/" + "p" * 500,
        "/console/inspection/heatmaps/ABCDEF..%00/x.png",
    ]:
        answer = client.get(trick)
        refused(answer, 400, 404)
        assert answer.headers.get("content-type", "").startswith("text/html"), trick


def test_every_change_needs_the_sessions_csrf_token_and_our_origin(
    net: LocalNetwork, sunarc: tuple[httpx.Client, str], case_id: str
) -> None:
    client, csrf = sunarc
    forms = [
        ("/console/contracts/negotiate", {"peer": "cellex", "asset_id": "inspections"}),
        ("/console/traces/start", {"batch": "B-1"}),
        (f"/console/investigations/{case_id}/ack", {"note": "n"}),
        (f"/console/investigations/{case_id}/close", {}),
        (f"/console/investigations/{case_id}/actions/A1/done", {}),
        ("/console/federation/deploy", {"version": "abcdef"}),
        ("/console/logout", {}),
    ]
    for path, fields in forms:
        assert "CSRF" in refused(client.post(path, data=fields), 403), path
        assert "CSRF" in refused(client.post(path, data={**fields, "csrf": "forged"}), 403)
        wrong = {"x-csrf-token": "forged"}
        assert "CSRF" in refused(client.post(path, data=fields, headers=wrong), 403)
        origin = {"origin": "https://evil.example"}
        text = refused(client.post(path, data={**fields, "csrf": csrf}, headers=origin), 403)
        assert "cross-origin" in text
        # a JSON body cannot carry the form's field: the header is required
        refused(client.post(path, json={**fields, "csrf": csrf}), 403)
    verify = "/console/ledger/verify"
    refused(client.post(verify, content=b"{}", headers={"content-type": "application/json"}), 403)
    # nothing moved: the case is still where the opener left it
    with net["sunarc"].client() as api:
        case = ok(api.get(f"/v1/investigations/{case_id}"))
    assert case["state"] in ("SENT", "RECEIVED")  # the receiver's receipt, nothing of ours
    steps = [e["step"] for e in case["events"]]
    assert steps == ["OPEN", "SEND", "RECEIVE"][: len(steps)]
    assert client.get("/console/").status_code == 200  # and the session was not logged out


def test_a_cookie_from_another_node_opens_nothing(
    net: LocalNetwork, sunarc: tuple[httpx.Client, str]
) -> None:
    cellex, cellex_csrf = login(net["cellex"])
    cookie = cellex.cookies.get("qdspace_console")
    cellex.close()
    assert cookie
    with browser_client(net["sunarc"]) as stranger:
        stranger.cookies.set("qdspace_console", cookie)
        page = stranger.get("/console/inspection")
        assert page.status_code == 303 and page.headers["location"].endswith("/console/login")
        form = {"csrf": cellex_csrf, "batch": "B-1"}
        assert refused(stranger.post("/console/traces/start", data=form), 401)
        refused(stranger.get("/console/spc/stream", headers={"hx-request": "1"}), 401)
        # nor is a console cookie any API credential
        refused(stranger.get("/v1/node"), 401)


def test_huge_query_parameters_are_4xx_or_ignored_never_5xx(
    sunarc: tuple[httpx.Client, str],
) -> None:
    client, _ = sunarc
    huge = "q" * 6000
    for path in [
        "/console/",
        "/console/spc",
        "/console/contracts",
        "/console/inspection",
        "/console/federation",
        "/console/traces",
        "/console/investigations",
        "/console/ledger",
    ]:
        answer = client.get(path, params={"error": huge, "deployed": huge, "x": huge})
        assert answer.status_code == 200, (path, answer.status_code)
        assert huge not in answer.text, path  # echoed at most cut short
    refused(client.get("/console/ledger/proof", params={"kind": huge, "ref_id": "x"}), 404)


def test_the_regulator_console_is_read_only_and_takes_only_a_regulator_credential(
    net: LocalNetwork,
) -> None:
    member = net["sunarc"]
    keys = load_member_keys(net["regulator"].directory)
    audience = load_member_keys(member.directory).identity.member_id
    with member.regulator_client() as reg:
        assert reg.get("/console/").status_code == 303
        text = refused(reg.post("/console/login", data={"token": member.token}), 401)
        assert "credential" in text
        refused(reg.post("/console/login", data={"token": "a.b.c"}), 401)
        refused(reg.post("/console/login", data={"token": "x" * 10_000}), 401)
        wrong_audience = issue_credential(keys, "someone-else")
        refused(reg.post("/console/login", data={"token": wrong_audience}), 401)
        answer = reg.post("/console/login", data={"token": issue_credential(keys, audience)})
        assert answer.status_code == 303, answer.text
        page = reg.get("/console/")
        assert page.status_code == 200 and "Verify what sunarc anchored" in page.text
        for operator_page in ("/console/contracts", "/console/traces", "/console/spc"):
            refused(reg.get(operator_page), 404, 405)
        refused(reg.post("/console/traces/start", data={"batch": "B-1"}), 403, 404, 405)
        verify = "/console/ledger/verify"
        refused(reg.post(verify, content=b"{}", headers={"content-type": "application/json"}), 403)
        csrf = CSRF.search(page.text)
        assert csrf is not None
        headers = {"x-csrf-token": csrf.group(1), "content-type": "application/json"}
        assert "not a JSON document" in refused(
            reg.post(verify, content=b"nope", headers=headers), 400
        )
        refused(reg.get("/console/ledger/proof", params={"kind": "agreement", "ref_id": "no"}), 404)
    # the operator's session is no regulator session, and the other way round
    client, _ = login(member)
    client.close()
    with member.regulator_client() as reg:
        reg.cookies.set("qdspace_console", client.cookies.get("qdspace_console") or "")
        assert reg.get("/console/").status_code == 303
