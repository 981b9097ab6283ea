"""The web console in a real browser: headless Debian Chromium driven by Playwright.

A network of its own (SunArc and Cellex, with the chain, and a regulator: the tests
negotiate, subscribe, trace, open cases, run a federated job and anchor, which the
session network's other tests must not see). One browser for the module. Every page
visited is written as a screenshot into the test's folder, and into
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

from .chromium import launched, playwright_or_skip
from .conftest import CELLEX_ORDER, ingest_sample, negotiate, ok, wait_for

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"

sync_api = playwright_or_skip()


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
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("regulator", "regulator"),
        ],
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
    with launched(sync_api) as chromium:
        yield chromium


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
    for check in ("database", "crl", "chain", "peers", "disk"):
        sync_api.expect(page.locator(f'[data-check="{check}"] .badge')).to_have_text("OK")
    sync_api.expect(page.locator("svg.network")).to_contain_text("cellex")
    sync_api.expect(page.locator("#links")).to_contain_text("cellex")
    shots.take(page, "overview")
    page.context.close()


def test_spc_chart_gains_a_streamed_point_and_marks_a_violation(
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
        # the point must come by server push (no reload); how fast is a figure, printed
        # below for the record (0.1 s here), not a pass mark: the house measures speed in
        # bench/, and a loaded CI machine must not fail a correct console
        timeout=10_000,
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


#: how many pixels of a plot's canvas have the value line's colour (#1f4e79)
_INKED = """el => {
  const c = el.querySelector("canvas");
  if (!c) return 0;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let k = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 31) < 24 && Math.abs(d[i + 1] - 78) < 24 &&
        Math.abs(d[i + 2] - 121) < 24 && d[i + 3] > 200) k++;
  }
  return k;
}"""


def test_spc_chart_switches_to_xbar_r_by_keyboard_and_marks_a_shifted_subgroup(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots
) -> None:
    page = _login(browser, pair["sunarc"], viewport={"width": 1280, "height": 900})
    page.goto(f"{pair['sunarc'].api_url}/console/spc")
    key = f"sub:{live['subscription']['subscription_id']}"
    figure = page.locator(f'figure[data-series="{key}"]')
    page.wait_for_function(
        'k => +document.querySelector(`figure[data-series="${k}"]`).dataset.points >= 20',
        arg=key,
        timeout=10_000,
    )
    count = int(figure.get_attribute("data-points") or 0)
    # by keyboard only: the chart's view, then n = 5 -> 4
    figure.get_by_label("Chart", exact=True).focus()
    page.keyboard.press("ArrowDown")
    sync_api.expect(figure).to_have_attribute("data-view", "xbar")
    size = figure.get_by_label("Subgroup size n")
    sync_api.expect(size).to_be_enabled()
    size.focus()
    page.keyboard.press("ArrowUp")
    sync_api.expect(size).to_have_value("4")
    # complete subgroups only: the values beyond the last full 4 wait, undrawn
    sync_api.expect(figure).to_have_attribute("data-subgroups", str(count // 4))
    sync_api.expect(figure).to_have_attribute("data-pending", str(count % 4))
    sync_api.expect(figure.locator(".plot.individuals")).to_be_hidden()
    for chart in ("xbar", "rchart"):
        plot = figure.locator(f".plot.{chart}")
        sync_api.expect(plot).to_be_visible()
        sync_api.expect(plot).to_have_attribute("data-points", str(count // 4))
        # points drawn on the canvas, not only counted
        plot.element_handle().wait_for_element_state("stable")
        page.wait_for_function(f"el => ({_INKED})(el) > 50", arg=plot.element_handle())
    # a shift: fill the open subgroup, then one whole subgroup at 0.45 (the baseline's
    # subgroup means are about 0.11 with limits a few hundredths away)
    shifted = 4 - count % 4 + 4
    with pair["cellex"].client() as supplier:
        rows = [_row(live["tag"], 300 + i, 0.45) for i in range(shifted)]
        ok(supplier.post("/v1/ingest/inspection", json={"rows": rows}))
    xbar = figure.locator(".plot.xbar")
    page.wait_for_function(
        "el => +el.dataset.violations > 0", arg=xbar.element_handle(), timeout=10_000
    )
    sync_api.expect(figure).to_have_attribute("data-subgroups", str((count + shifted) // 4))
    sync_api.expect(figure).to_have_attribute("data-pending", "0")
    figure.locator("summary").click()
    sync_api.expect(figure.locator(".violations tbody")).to_contain_text("(X-bar)")
    sync_api.expect(figure.locator(".violations tbody")).to_contain_text("WE1")
    sync_api.expect(figure.locator(".xstats")).to_contain_text("R-bar")
    shots.take(page, "spc-xbar-r")
    # and back: the individuals chart again, on the same stream
    figure.get_by_label("Chart", exact=True).select_option("individuals")
    sync_api.expect(figure.locator(".plot.individuals")).to_be_visible()
    sync_api.expect(figure.locator(".xbar-r")).to_be_hidden()
    sync_api.expect(figure).to_have_attribute("data-points", str(count + shifted))
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


def test_trace_graph_shows_the_planted_cause_and_a_case_moves_on_the_page(
    pair: LocalNetwork, browser: Any, shots: Shots
) -> None:
    from .test_trace import cellex_rows, ingest, sunarc_rows, traceability

    ingest(pair, "sunarc", sunarc_rows())
    ingest(pair, "cellex", cellex_rows())
    traceability(pair, "sunarc", "cellex", "PO-SC")
    page = _login(browser, pair["sunarc"], viewport={"width": 1280, "height": 900})
    page.goto(f"{pair['sunarc'].api_url}/console/traces")
    page.get_by_label("Failed batch id").fill("MB-01")
    page.get_by_role("button", name="Start trace").click()
    page.wait_for_url("**/console/traces/tr-*")
    sync_api.expect(page.locator("#trace-state")).to_have_text("DONE", timeout=30_000)
    # the planted excursion's member and equipment are drawn at the end of a path from
    # the failed module batch (one batch is too few for significance: the window trace
    # of test_trace.py shows that; here the picture is what is tested)
    cause = page.locator('svg.trace-graph g.cause[data-member="cellex"]', has_text="PECVD-1")
    sync_api.expect(cause.first).to_be_visible()
    sync_api.expect(page.locator("svg.trace-graph g.step").first).to_contain_text("MB-01")
    sync_api.expect(page.locator("#causes tbody tr").first).to_contain_text("cellex")
    sync_api.expect(page.locator("#shares")).to_contain_text("cellex")
    shots.take(page, "trace")
    trace_id = page.url.rsplit("/", 1)[-1]
    # a case about it, with an action each; ours is already past its due date
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    later = (datetime.now(UTC) + timedelta(days=14)).date().isoformat()
    body = {
        "peer": "cellex",
        "severity": "MAJOR",
        "subject": "Microcracks in MB-01",
        "batch_ids": ["MB-01"],
        "trace_report_id": trace_id,
        "actions": [
            {"action_id": "C1", "kind": "CONTAINMENT", "owner": "sunarc", "due": yesterday},
            {"action_id": "R1", "kind": "ROOT-CAUSE", "owner": "cellex", "due": later},
        ],
    }
    with pair["sunarc"].client() as oem:
        case_id = ok(oem.post("/v1/investigations", json=body))["case_id"]
    supplier = _login(browser, pair["cellex"], viewport={"width": 1280, "height": 900})
    supplier.goto(f"{pair['cellex'].api_url}/console/investigations")
    supplier.locator(f'tr[data-case="{case_id}"] a').click()
    sync_api.expect(supplier.locator("#case-state")).to_have_text("RECEIVED")
    supplier.get_by_role("button", name="Acknowledge").click()
    sync_api.expect(supplier.locator("#case-state")).to_have_text("ACKNOWLEDGED")
    supplier.get_by_role("button", name="Accept").click()
    sync_api.expect(supplier.locator("#case-state")).to_have_text("ACCEPTED")
    supplier.context.close()
    page.goto(f"{pair['sunarc'].api_url}/console/investigations/{case_id}")
    sync_api.expect(page.locator("#case-state")).to_have_text("ACCEPTED", timeout=10_000)
    ours = page.locator('tr[data-action="C1"]')
    sync_api.expect(ours.locator(".overdue")).to_have_text("OVERDUE")
    sync_api.expect(page.locator("#timeline")).to_contain_text("ACCEPT")
    shots.take(page, "case")
    ours.get_by_role("button", name="Mark C1 done").click()
    sync_api.expect(page.locator('tr[data-action="C1"]')).to_contain_text("DONE")
    page.goto(f"{pair['sunarc'].api_url}/console/investigations")
    sync_api.expect(page.locator(f'tr[data-case="{case_id}"]')).to_contain_text("ACCEPTED")
    shots.take(page, "investigations")
    page.context.close()


def _inspection_files(directory: Path) -> tuple[str, str]:
    """Two registered model versions (the first active), heatmaps of its misjudgments, the
    line's drift and status files, as the inspection tier leaves them in a node directory."""
    import numpy as np

    training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)
    from qdspace.inference.alarms import AlarmLog
    from qdspace.inference.dataset import ElImages
    from qdspace.inference.drift import DriftMonitor, DriftThresholds
    from qdspace.inference.explain import explain
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.stats import LineSnapshot, LineStats
    from qdspace.inference.verdicts import ServedVerdict
    from qdspace.node.layout import NodeLayout
    from qdspace.node.runtime.line_status import LineStatusWriter

    registry = ModelRegistry(directory)
    onnx = [
        training.export_onnx(
            training.build_model(training.TrainConfig(input_size=32, widths=(4, 8, 8), seed=s)),
            32,
        )
        for s in (1, 2)
    ]
    first = registry.register(onnx[0], "local", {"f1": 0.81, "auroc": 0.9}, activate=True)
    second = registry.register(onnx[1], "federated:fl-console/v2", {"f1": 0.84})
    rng = np.random.default_rng(4)
    cells = ElImages(
        images=rng.integers(0, 256, (24, 40, 40), dtype=np.uint8),
        probabilities=np.array([(0.0, 1.0, 1 / 3, 2 / 3)[i % 4] for i in range(24)]),
        cell_types=tuple(("mono", "poly")[i % 3 == 0] for i in range(24)),
        indices=np.arange(24, dtype=np.int64),
    )
    layout = NodeLayout(directory)
    explain(registry.load(first.version, device="cpu"), cells, layout.explanations / first.version)
    thresholds = DriftThresholds(window=40, min_negatives=5, min_positives=5)
    drift = DriftMonitor(AlarmLog(), thresholds, model=first.version)
    stats = LineStats()
    writer = LineStatusWriter(layout.line_status, every_s=0.0)
    for i in range(60):
        label = i % 2
        wrong = i > 30 and i % 3 == 0  # the line starts to err: FPR and FNR rise
        called = "fail" if (label == 1) != wrong else "pass"
        drift.observe("EL-2", label, ServedVerdict(f"f{i}", called, None, 0.5, first.version))
        stats.judged("EL-2", 20.0 + i % 7, first.version)
        if i % 10 == 0:
            stats.count("EL-2", "skipped")
        judged, stored, rate, versions, elapsed = stats.summaries()
        snapshot = LineSnapshot(
            elapsed, stats.station_counts(), judged, stored, rate, versions, i, 0, 0, 0, 0
        )
        writer.write(snapshot, first.version, drift)
    drift.write(layout.drift)
    return first.version, second.version


def test_inspection_page_shows_the_line_drift_heatmaps_and_models(
    pair: LocalNetwork, browser: Any, shots: Shots
) -> None:
    oem = pair["sunarc"]
    first, second = _inspection_files(oem.directory)
    rows = []
    for i in range(40):
        row = _row("line", 500 + i, 0.2 if i % 5 else 0.7)
        row |= {"station": "EL-2", "latency_ms": 18.0 + i % 9}
        row["model_version"] = first if i < 25 else second  # a hot swap after 25 verdicts
        rows.append(row)
    with oem.client() as client:
        ok(client.post("/v1/ingest/inspection", json={"rows": rows}))
    page = _login(browser, oem, viewport={"width": 1280, "height": 900})
    page.goto(f"{oem.api_url}/console/inspection")
    sync_api.expect(page.locator("#stations")).to_contain_text("EL-2")
    sync_api.expect(page.locator("#line-dropped")).to_have_text("6")
    sync_api.expect(page.locator("#line-latency")).to_contain_text("p99")
    sync_api.expect(page.locator("svg.drift-chart polyline")).to_have_count(2)
    sync_api.expect(page.locator("svg.drift-chart")).to_contain_text("max FPR")
    sync_api.expect(page.locator("#swaps tbody tr")).to_have_count(3)  # el-console-1 too
    sync_api.expect(page.locator("#models tbody tr")).to_have_count(2)
    sync_api.expect(page.locator("#decisions")).to_contain_text("UNGATED")
    heatmaps = page.locator("figure.heatmap img")
    assert heatmaps.count() >= 1
    for i in range(heatmaps.count()):
        image = heatmaps.nth(i)
        image.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        box = image.bounding_box()
        assert box is not None and box["width"] >= 300, box  # large enough to read
    shots.take(page, "inspection")
    page.context.close()


def test_federation_page_shows_rounds_dropouts_anchor_and_deploys_a_version(
    pair: LocalNetwork, browser: Any, shots: Shots, tmp_path: Path
) -> None:
    from qdspace.federation import logreg
    from qdspace.federation.job import JobSpec

    oem = pair["sunarc"]
    data, test = tmp_path / "shard.npz", tmp_path / "test.npz"
    logreg.save_dataset(data, logreg.make_blobs(200, 6, 2, seed=3))
    logreg.save_dataset(test, logreg.make_blobs(100, 6, 2, seed=4))
    terms = JobSpec(
        job_id="fl-console",
        coordinator="sunarc",
        model="logreg",
        shapes=logreg.model_shapes(6, 2),
        rounds=2,
        min_members=1,
        members=("cellex", "sunarc"),
        phase_timeout_s=2.0,
    ).to_dict()
    with oem.client(timeout=60) as client:
        ok(client.post("/v1/federation/jobs", json={"terms": terms}))
        join = {"job_id": "fl-console", "data": str(data), "test": str(test), "poll_s": 0.5}
        sid = ok(client.post("/v1/federation/sessions", json=join))["session_id"]
        wait_for(
            "the federated job",
            lambda: ok(client.get(f"/v1/federation/sessions/{sid}"))["state"] != "running",
            timeout=90,
        )
        ok(client.post("/v1/ledger/flush"))
    page = _login(browser, oem, viewport={"width": 1280, "height": 900})
    page.goto(f"{oem.api_url}/console/federation")
    job = page.locator('article.job[data-job="fl-console"]')
    sync_api.expect(job.locator(".rounds tbody tr")).to_have_count(2)
    sync_api.expect(job.locator(".dropouts").first).to_have_text("cellex")
    sync_api.expect(page.locator("svg.accuracy-chart polyline")).to_have_count(1)
    signed = page.locator('#signed tr[data-ref="fl-console/v2"]')
    sync_api.expect(signed.locator(".anchor")).to_contain_text("VALID")
    shots.take(page, "federation")
    row = page.locator("#deployable tbody tr", has_text="federated:fl-console/v2")
    row.get_by_role("button", name="Deploy").click()
    sync_api.expect(page.locator("#deployed")).to_contain_text("active inspection model")
    sync_api.expect(page.locator("#deployable tbody tr", has_text="federated")).to_contain_text(
        "active"
    )
    page.context.close()


def test_regulator_verifies_a_proof_and_a_tampered_file_on_its_own_listener(
    pair: LocalNetwork, live: dict[str, Any], browser: Any, shots: Shots, tmp_path: Path
) -> None:
    from qdspace.node.api.regulator_auth import issue_credential
    from qdspace.node.identity.member import load_member_keys

    oem = pair["sunarc"]
    with oem.client() as client:
        ok(client.post("/v1/ledger/flush"))
    keys = load_member_keys(pair["regulator"].directory)
    credential = issue_credential(keys, load_member_keys(oem.directory).identity.member_id)
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(f"{oem.regulator_url}/console/")
    page.get_by_label("Regulator credential").fill(oem.token)  # the operator's is no use here
    page.get_by_role("button", name="Log in").click()
    sync_api.expect(page.locator("#login-error")).to_be_visible()
    page.get_by_label("Regulator credential").fill(credential)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/console/")
    agreement_id = live["agreement"]["agreement_id"]
    page.get_by_label("Kind").select_option("agreement")
    page.get_by_label("Record id").fill(agreement_id)
    page.get_by_role("button", name="Look up and verify").click()
    sync_api.expect(page.locator("#lookup-result .verdict-word")).to_contain_text("VALID")
    params = {"kind": "agreement", "ref_id": agreement_id}
    proof = page.request.get(f"{oem.regulator_url}/console/ledger/proof.json", params=params).json()
    proof["root"] = "0x" + "00" * 32
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(proof))
    page.locator("#proof-file").set_input_files(str(bad))
    sync_api.expect(page.locator("#drop-verdict .verdict-word")).to_contain_text("INVALID")
    not_json = tmp_path / "notes.json"
    not_json.write_text("these are notes, not a proof")
    page.locator("#proof-file").set_input_files(str(not_json))
    sync_api.expect(page.locator("#drop-verdict .reason")).to_contain_text("not a JSON document")
    page.locator("#proof-file").set_input_files(str(bad))
    sync_api.expect(page.locator("#drop-verdict .verdict-word")).to_contain_text("INVALID")
    shots.take(page, "regulator")
    assert page.locator("nav").inner_text().split() == ["Verify"]
    ctx.close()


def test_every_page_opens_at_phone_width(pair: LocalNetwork, browser: Any, shots: Shots) -> None:
    phone = {"width": 390, "height": 844}
    page = _login(browser, pair["sunarc"], viewport=phone, is_mobile=True, has_touch=True)
    for path in ("inspection", "federation", "traces", "investigations"):
        answer = page.goto(f"{pair['sunarc'].api_url}/console/{path}")
        assert answer is not None and answer.status == 200, path
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= phone["width"] + 1, (path, width)  # wide tables scroll in their card
    shots.take(page, "investigations-phone")
    page.context.close()
