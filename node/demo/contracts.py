"""Demo chapter: the whole life of usage contracts between real nodes.

SunArc (OEM) negotiates with both suppliers for the inspection data of its orders
(request, counter-offer, both Ed25519 signatures), pulls it over the mTLS,
policy-filtered transfer, is refused what the agreement does not cover, subscribes
to Cellex's live EL stream and sees an SPC alert when the scores drift; then the
suppliers close the orders, the contract clock moves 180 days on, SunArc's sweeper
deletes the data and destroys its keys, and the signed deletion receipts are shown
on both sides.

`contracts_step(network, report)` is the step (results in
``report.chapters['contracts']``), `print_contracts(console, report)` its summary.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qdspace.connector.sample import order_for
from qdspace.node.client import ClientError, OperatorClient
from qdspace.node.demo.report import DemoReport
from qdspace.node.errors import NodeError

if TYPE_CHECKING:
    from qdspace.node.localnet.network import LocalNetwork

TITLE = "usage contracts: negotiate, transfer, live SPC, close, delete"
CHAPTER = "contracts"
OEM = "sunarc"
SUPPLIERS = ("cellex", "polycell")
QA = "quality-assurance"
SPC = "spc-monitoring"
# just short of the 180-day deadline: the sweeper (1 h horizon) deletes on time
CLOCK_JUMP_DAYS = 180 - 1 / 48


def _wait(what: str, probe: Any, timeout: float = 30.0, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(poll_s)
    raise NodeError(f"demo: timed out waiting for {what}")


def _agree_and_pull(oem: OperatorClient, supplier: str, asset: str) -> dict[str, Any]:
    order = order_for(supplier)
    started = time.perf_counter()
    agreed = oem.negotiate(supplier, asset, [QA], orders=[order])
    ms = (time.perf_counter() - started) * 1000
    if agreed["state"] != "FINALIZED":
        raise NodeError(f"negotiation with {supplier} ended {agreed['state']}: {agreed['reason']}")
    aid = agreed["agreement_id"]
    started = time.perf_counter()
    pulled = oem.transfer(aid, QA, order_id=order)
    seconds = time.perf_counter() - started
    return {
        "supplier": supplier,
        "asset": asset,
        "order": order,
        "agreement_id": aid,
        "messages": agreed["messages"],
        "negotiation_ms": round(ms, 1),
        "rows": pulled["offset"],
        "transfer_s": round(seconds, 2),
        "digest": pulled["digest"],
    }


def _refused(call: Callable[[], Any]) -> str:
    """``status detail`` of a call that must be refused."""
    try:
        call()
    except ClientError as exc:
        return f"{exc.status} {exc.detail}"
    raise NodeError("demo: a call that the contract forbids was not refused")


def _refusals(network: LocalNetwork, oem: OperatorClient, first: dict[str, Any]) -> list[str]:
    out = []
    other = order_for("polycell")
    aid = first["agreement_id"]
    refused = _refused(lambda: oem.transfer(aid, QA, order_id=other))
    out.append(f"{OEM} asks cellex for {other}: {refused}")
    refused = _refused(lambda: oem.transfer(aid, "marketing", order_id=first["order"]))
    out.append(f"{OEM} asks for marketing use: {refused}")
    with network["regulator"].operator() as regulator:
        refused = _refused(lambda: regulator.catalog("cellex"))
    out.append(f"regulator asks for cellex's catalog: {refused}")
    return out


def _live(network: LocalNetwork, oem: OperatorClient) -> dict[str, Any]:
    order = order_for("cellex")
    agreed = oem.negotiate("cellex", "live-inspections", [SPC], orders=[order])
    sub = oem.subscribe(agreed["agreement_id"], SPC, usl=0.5, baseline_size=20)
    sid = sub["subscription_id"]
    start = datetime.now(UTC).replace(microsecond=0)
    scores = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.11, 0.10, 0.12] * 2 + [0.44] * 4
    seen_ms: list[float] = []
    with network["cellex"].operator() as supplier:
        for i, score in enumerate(scores):
            row = {
                "inspection_id": f"CX-LIVE-{start:%H%M%S}-{i:03d}",
                "station": "EL-2",
                "inspected_at": (start + timedelta(seconds=i)).isoformat(),
                "verdict": "pass",
                "score": score,
                "model_version": "el-live",
                "order_id": order,
                "batch_id": "CX-CB-260012",
            }
            supplier.ingest_rows("inspection", [row])
            posted = time.perf_counter()  # committed at the supplier
            _wait(
                "the record at the OEM",
                lambda n=i + 1: oem.subscription(sid)["received"] >= n,
                poll_s=0.002,
            )
            seen_ms.append((time.perf_counter() - posted) * 1000)
    status = _wait(
        "the SPC alert at the OEM",
        lambda: (s := oem.subscription(sid))["alerts"] and s["received"] >= len(scores) and s,
    )
    with network["cellex"].operator() as supplier:
        told = _wait("the alert at cellex", lambda: supplier.alerts()["received"])
    return {
        "agreement_id": agreed["agreement_id"],
        "received": status["received"],
        "latency_ms_p50": status["latency_ms_p50"],
        "ingest_to_oem_ms_p50": sorted(seen_ms)[len(seen_ms) // 2],
        "ingest_to_oem_ms_max": max(seen_ms),
        "alerts": [a["description"] for a in status["alerts"]],
        "supplier_told": len(told),
    }


def _close_and_delete(network: LocalNetwork, oem: OperatorClient) -> dict[str, Any]:
    closed = {}
    for supplier in SUPPLIERS:
        with network[supplier].operator() as client:
            closed[supplier] = client.close_order(order_for(supplier))
    agreements = oem.agreements()
    _wait("the closures at the OEM", lambda: len(oem.closures()) >= len(agreements))
    for name in network.members:
        with network[name].operator() as client:
            client.set_clock(CLOCK_JUMP_DAYS)
    swept = oem.sweep(horizon_hours=1)
    left = sum(oem.received(a["agreement_id"])["total"] for a in agreements)
    receipts: dict[str, list[dict[str, Any]]] = {OEM: swept["receipts"]}
    duties: dict[str, list[dict[str, Any]]] = {}
    for supplier in SUPPLIERS:
        with network[supplier].operator() as client:
            theirs = {
                a["agreement_id"] for a in agreements if a["provider_id"].startswith(f"{supplier}-")
            }
            mine = {r["receipt_id"] for r in swept["receipts"] if r["agreement_id"] in theirs}

            def arrived(c: OperatorClient = client, want: set[str] = mine) -> Any:
                got = [r for r in c.receipts() if r["receipt_id"] in want]
                return got if len(got) == len(want) else None

            receipts[supplier] = _wait(f"receipts at {supplier}", arrived)
            duties[supplier] = client.duties()
    for name in network.members:  # back to real time for whatever comes next
        with network[name].operator() as client:
            client.set_clock(0)
    return {
        "closed": {s: c["closed_at"] for s, c in closed.items()},
        "rows_deleted": swept["rows_deleted"],
        "rows_left": left,
        "receipts": receipts,
        "duties": duties,
    }


def contracts_step(network: LocalNetwork, report: DemoReport) -> None:
    """The chapter: see the module docstring."""
    with network[OEM].operator(timeout=120) as oem:
        pulls = [_agree_and_pull(oem, s, "inspections") for s in SUPPLIERS]
        pulls.append(_agree_and_pull(oem, "cellex", "process-genealogy"))
        refusals = _refusals(network, oem, pulls[0])
        live = _live(network, oem)
        retention = _close_and_delete(network, oem)
    report.chapters[CHAPTER] = {
        "agreements": pulls,
        "refusals": refusals,
        "live": live,
        "retention": retention,
    }
    refs = report.chapters.setdefault("ledger_refs", [])
    refs.extend([OEM, "agreement", p["agreement_id"]] for p in pulls)
    refs.extend(
        [s, "deletion_receipt", r["receipt_id"]]
        for s in SUPPLIERS
        for r in retention["receipts"][s]
    )


def print_contracts(console: Console, report: DemoReport) -> None:
    data = report.chapters.get(CHAPTER)
    if not data:
        return
    table = Table(
        title="usage contracts (both signatures, policy-filtered transfer)", title_justify="left"
    )
    for col in ("provider", "asset", "order", "agreement", "negotiation", "rows", "transfer"):
        table.add_column(col)
    for p in data["agreements"]:
        table.add_row(
            p["supplier"],
            p["asset"],
            p["order"],
            p["agreement_id"][:16],
            f"{p['negotiation_ms']:.0f} ms / {p['messages']} msgs",
            str(p["rows"]),
            f"{p['transfer_s']:.2f} s",
        )
    console.print(table)
    for line in data["refusals"]:
        console.print(f"refused: {line}", highlight=False, soft_wrap=True)
    live = data["live"]
    console.print(
        f"live EL stream cellex -> sunarc: {live['received']} records; committed at cellex "
        f"to stored at sunarc p50 {live['ingest_to_oem_ms_p50']:.0f} ms, max "
        f"{live['ingest_to_oem_ms_max']:.0f} ms (wire p50 {live['latency_ms_p50']:.1f} ms); "
        "SPC alerts: "
        + "; ".join(dict.fromkeys(live["alerts"]))
        + f" (cellex was told: {live['supplier_told']} alerts)",
        highlight=False,
        soft_wrap=True,
    )
    retention = data["retention"]
    console.print(
        f"orders closed: {retention['closed']}; contract clock moved "
        f"{CLOCK_JUMP_DAYS:.2f} days; sunarc deleted {retention['rows_deleted']} rows "
        f"({retention['rows_left']} left), keys destroyed",
        highlight=False,
        soft_wrap=True,
    )
    receipts = Table(title="signed deletion receipts, held by both sides", title_justify="left")
    for col in ("held by", "receipt", "order", "rows", "sha256 of deleted rows", "deleted at"):
        receipts.add_column(col)
    for holder, items in retention["receipts"].items():
        for r in items:
            receipts.add_row(
                holder,
                r["receipt_id"][:18],
                r["order_id"],
                str(r["row_count"]),
                r["content_sha256"][:16],
                r["deleted_at"],
            )
    console.print(receipts)
    for supplier, duties in retention["duties"].items():
        console.print(
            f"{supplier}'s deletion duties (one per agreement): {duty_states(duties)}",
            highlight=False,
            soft_wrap=True,
        )


def duty_states(duties: list[dict[str, Any]]) -> str:
    """A provider's deletion duties by order: how many agreements, in which states
    (``PO-1: 4 agreements, all fulfilled``), rather than the order once per agreement."""
    by_order: dict[str, Counter[str]] = {}
    for duty in duties:
        by_order.setdefault(duty["order_id"] or "-", Counter())[duty["status"]] += 1
    parts = []
    for order, states in by_order.items():
        total = sum(states.values())
        if total == 1:
            parts.append(f"{order}: {next(iter(states))}")
            continue
        which = (
            f"all {next(iter(states))}"
            if len(states) == 1
            else ", ".join(f"{n} {state}" for state, n in states.most_common())
        )
        parts.append(f"{order}: {total} agreements, {which}")
    return "; ".join(parts)
