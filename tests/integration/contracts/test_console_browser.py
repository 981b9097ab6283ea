"""The web console in a real browser: headless Debian Chromium driven by Playwright.

A network of its own (SunArc and Cellex, with the chain: the test negotiates, subscribes
and anchors, which the session network's other tests must not see). One browser for the
module. Every page visited is written as a screenshot into the test's folder, and into
``$QDSPACE_SCREENSHOTS`` when that is set (the README's pictures come from there).

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``); Playwright's own
browser downloads are never used. On a developer machine without chromium the tests skip
and say so; in CI (``CI`` set) a missing chromium fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import CELLEX_ORDER, ingest_sample, negotiate, ok, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("QDSPACE_CHROMIUM", "/usr/bin/chromium")
SPC = "spc-monitoring"
#: what the probe of this machine kind found Chromium needs on a closed network, as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(
        f"no chromium at {CHROMIUM}: `apt-get install chromium` (CI installs it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")


def _row(tag: str, i: int, score: float) -> dict[str, Any]:
    at = datetime(2026, 12, 3, 6, 0, tzinfo=UTC) + timedelta(seconds=i)
    return {
        "inspection_id": f"CONSOLE-{tag}-{i:04d}",
        "station": "EL-1",
        "inspected_at": at.isoformat().replace("+00:00", "Z"),
        "verdict": "fail" if score > 0.5 else "pass",
        "score": score,
        "model_version": "el-console-1",
        "order_id": CELLEX_ORDER,
        "batch_id": "CX-CB-260012",
    }


class Shots:
    """Screenshots into the test's folder and, if set, ``$QDSPACE_SCREENSHOTS``."""

    def __init__(self, folder: Path) -> None:
        self.folders = [folder]
        extra = os.environ.get("QDSPACE_SCREENSHOTS")
        if extra:
            self.folders.append(Path(extra))
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str) -> None:
        first = self.folders[0] / f"{name}.png"
        page.screenshot(path=str(first), full_page=True)
        for other in self.folders[1:]:
            shutil.copyfile(first, other / first.name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("console"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
    )
    net.create()
    net.start()
    try:
        ingest_sample(net, "cellex")
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def live(pair: LocalNetwork) -> dict[str, Any]:
    """A live subscription of SunArc to Cellex's inspections, with a steady baseline."""
    with pair["sunarc"].client() as oem:
        agreement = negotiate(
            oem, "cellex", "live-inspections", orders=[CELLEX_ORDER], purposes=[SPC]
        )
        body = {
            "agreement_id": agreement["agreement_id"],
            "purpose": SPC,
            "usl": 0.5,
            "baseline_size": 20,
        }
        sub = ok(oem.post("/v1/contracts/subscriptions", json=body))
    tag = uuid.uuid4().hex[:8]
    steady = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.11, 0.10, 0.12] * 2
    with pair["cellex"].client() as supplier:
        rows = [_row(tag, i, s) for i, s in enumerate(steady)]
        ok(supplier.post("/v1/ingest/inspection", json={"rows": rows}))
    sid = sub["subscription_id"]
    with pair["sunarc"].client() as oem:
        wait_for(
            "the baseline at the OEM",
            lambda: ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))["received"] >= 20,
        )
    return {"agreement": agreement, "subscription": sub, "tag": tag}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Shots:
    return Shots(tmp_path_factory.mktemp("screenshots"))


def _login(browser: Any, member: Any, **context: Any) -> Any:
    ctx = browser.new_context(ignore_https_errors=True, **context)
    page = ctx.new_page()
    page.goto(f"{member.api_url}/console/login")
    page.get_by_label("Operator token").fill(member.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console/")
    return page


def test_login_refuses_a_wrong_token_and_the_api_keeps_its_bearer_auth(
    pair: LocalNetwork, browser: Any, shots: Shots
) -> None:
    oem = pair["sunarc"]
    ctx = browser.new_context(ignore_https_errors=True)
    page = ctx.new_page()
    page.goto(f"{oem.api_url}/console/")  # not logged in: to the login form
    assert page.url.endswith("/console/login")
    page.get_by_label("Operator token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    sync_api.expect(page.locator("#login-error")).to_contain_text("not this node's operator token")
    assert not [c for c in ctx.cookies() if c["name"] == "qdspace_console"]
    shots.take(page, "login-refused")
    page.get_by_label("Operator token").fill(oem.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console/")
    cookie = next(c for c in ctx.cookies() if c["name"] == "qdspace_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    # the session cookie is no API credential, and a change without the CSRF token is refused
    with oem.client(token="") as raw:
        raw.cookies.set("qdspace_console", cookie["value"])
        assert raw.get("/v1/node").status_code == 401
        forged = raw.post("/console/contracts/negotiate", data={"peer": "cellex", "asset_id": "x"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        assert raw.get("/console/spc").status_code == 200
    ctx.close()


def test_overview_shows_member_health_and_network(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots
) -> None:
    page = _login(browser, pair["sunarc"])
    sync_api.expect(page.locator("#member-name")).to_have_text("sunarc")
    sync_api.expect(page.locator("#member-role")).to_have_text("oem")
    for check in ("database", "crl", "chain", "peers"):
        sync_api.expect(page.locator(f'[data-check="{check}"] .badge')).to_have_text("OK")
    sync_api.expect(page.locator("svg.network")).to_contain_text("cellex")
    sync_api.expect(page.locator("#links")).to_contain_text("cellex")
    shots.take(page, "overview")
    page.context.close()


def test_spc_chart_gains_a_streamed_point_within_a_second_and_marks_a_violation(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots
) -> None:
    page = _login(browser, pair["sunarc"], viewport={"width": 1280, "height": 900})
    page.goto(f"{pair['sunarc'].api_url}/console/spc")
    key = f"sub:{live['subscription']['subscription_id']}"
    figure = page.locator(f'figure[data-series="{key}"]')
    sync_api.expect(figure).to_have_attribute("data-points", "20")
    before = int(figure.get_attribute("data-points") or 0)
    with pair["cellex"].client() as supplier:
        started = time.monotonic()
        row = _row(live["tag"], 100, 0.11)
        ok(supplier.post("/v1/ingest/inspection", json={"rows": [row]}))
    page.wait_for_function(
        '([key, n]) => +document.querySelector(`figure[data-series="${key}"]`).dataset.points > n',
        arg=[key, before],
        timeout=1000,
        polling=20,
    )
    print(f"console: supplier ingest to OEM chart point: {time.monotonic() - started:.3f} s")
    # a drift: beyond 3 sigma and 2 of 3 beyond 2 sigma, and Cpk falls under 1.33
    with pair["cellex"].client() as supplier:
        rows = [_row(live["tag"], 200 + i, 0.45) for i in range(3)]
        ok(supplier.post("/v1/ingest/inspection", json={"rows": rows}))
    page.wait_for_function(
        'k => +document.querySelector(`figure[data-series="${k}"]`).dataset.violations > 0',
        arg=key,
        timeout=10_000,
    )
    figure.locator("summary").click()
    sync_api.expect(figure.locator(".violations tbody")).to_contain_text("WE1")
    sync_api.expect(page.locator(f'[data-cpk-for="{key}"]')).to_have_class("cpk-warning")
    shots.take(page, "spc")
    page.context.close()


def test_phone_width_puts_the_cpk_warning_above_the_charts(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots
) -> None:
    test_spc_needs = f"sub:{live['subscription']['subscription_id']}"
    phone = {"width": 390, "height": 844}
    page = _login(browser, pair["sunarc"], viewport=phone, is_mobile=True, has_touch=True)
    page.goto(f"{pair['sunarc'].api_url}/console/spc")
    warning = page.locator(f'[data-cpk-for="{test_spc_needs}"].cpk-warning')
    sync_api.expect(warning).to_be_visible()
    panel = page.locator("#cpk-panel").bounding_box()
    chart = page.locator("figure.chart").first.bounding_box()
    assert panel is not None and chart is not None
    assert panel["y"] + panel["height"] <= chart["y"], (panel, chart)
    assert panel["width"] <= phone["width"]
    shots.take(page, "spc-phone")
    page.context.close()


def test_contracts_negotiate_from_an_offer_then_agreement_signatures_and_chain(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots
) -> None:
    page = _login(browser, pair["sunarc"], viewport={"width": 1280, "height": 900})
    page.goto(f"{pair['sunarc'].api_url}/console/contracts")
    sync_api.expect(page.locator("#agreements")).to_contain_text("live-inspections")
    sync_api.expect(page.locator('table.catalog[data-peer="cellex"]')).to_be_visible()
    shots.take(page, "contracts")
    page.get_by_role("button", name="Negotiate inspections from cellex as offered").click()
    page.wait_for_url("**/console/contracts/agreements/**")
    for side in ("#provider-signature", "#consumer-signature"):
        sync_api.expect(page.locator(f"{side} code")).to_have_text(_hex_signature())
    with pair["sunarc"].client() as oem:  # anchor what waits, so the chain has the agreement
        ok(oem.post("/v1/ledger/flush"))
    page.get_by_role("button", name="Verify on chain").click()
    sync_api.expect(page.locator("#chain-verdict .verdict-word")).to_contain_text("VALID")
    assert "INVALID" not in page.locator("#chain-verdict").inner_text()
    shots.take(page, "agreement")
    page.context.close()


def _hex_signature() -> Any:
    import re

    return re.compile(r"^[0-9a-f]{128}$")


def test_ledger_lookup_and_a_tampered_proof_is_invalid(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots, tmp_path: Path
) -> None:
    oem = pair["sunarc"]
    with oem.client() as client:
        ok(client.post("/v1/ledger/flush"))
    agreement_id = live["agreement"]["agreement_id"]
    page = _login(browser, oem, viewport={"width": 1280, "height": 900})
    page.goto(f"{oem.api_url}/console/ledger")
    sync_api.expect(page.locator("#batches")).to_contain_text("agreement")
    page.get_by_label("Kind").select_option("agreement")
    page.get_by_label("Record id").fill(agreement_id)
    page.get_by_role("button", name="Look up and verify").click()
    sync_api.expect(page.locator("#lookup-result .verdict-word")).to_contain_text("VALID")
    params = {"kind": "agreement", "ref_id": agreement_id}
    proof = page.request.get(f"{oem.api_url}/console/ledger/proof.json", params=params).json()
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(proof))
    page.locator("#proof-file").set_input_files(str(good))
    sync_api.expect(page.locator("#drop-verdict .verdict-word")).to_contain_text("VALID")
    assert "INVALID" not in page.locator("#drop-verdict").inner_text()
    digest = proof["record_sha256"]
    proof["record_sha256"] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(proof))
    page.locator("#proof-file").set_input_files(str(bad))
    sync_api.expect(page.locator("#drop-verdict .verdict-word")).to_contain_text("INVALID")
    reason = page.locator("#drop-verdict .reason").inner_text()
    assert reason.strip(), "an INVALID verdict names its reason"
    shots.take(page, "ledger")
    page.context.close()
