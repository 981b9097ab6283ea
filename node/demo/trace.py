"""Demo chapter: from an EL defect to its root cause, and the investigation that follows.

SunArc's EL line finds microcracks clustering in one module batch. SunArc holds a
traceability agreement with Cellex (purpose ``root-cause-analysis``, its order), Cellex
one with SiliWafer at its host; SunArc starts a trace from the failed inspections of the
last days. Its node finds the implicated module batch, asks Cellex about the cell batch
in it, Cellex asks SiliWafer (a tenant of Testhouse Hosting) about the wafers, and each
answers with findings, not rows. The report ranks Cellex's PECVD-2 chamber vacuum first,
with the window and the shift the leak happened in and the path module batch -> cell
batch -> process window -> wafer batch; the wafer maker answered and its data are clean.
All of this is the sample data's planted story (`connector.sample_pecvd`,
`connector.sample_cellex`); the chapter checks the trace against what was planted, and
against the decoy planted next to it.

SunArc then opens a quality investigation with Cellex naming the report, with action
items for both (containment, root cause, corrective action, verification); Cellex
acknowledges and accepts, each side marks its actions done, SunArc closes the case and
both nodes anchor the closure. Finally the regulator verifies the anchored report and the
closure through the member's regulator API and against the chain.

`trace_step(network, report)` is the step (results in ``report.chapters['trace']``),
`print_trace` its summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from qdspace.connector.sample import (
    EXCURSION_BATCH,
    cell_batch,
    cracked_module_batch,
    oem_inspection_window,
    order_for,
    wafer_batches,
)
from qdspace.connector.sample_cellex import FURNACE
from qdspace.connector.sample_pecvd import EXCURSION
from qdspace.connector.sample_wafers import WAFER_MAKERS, wafer_order
from qdspace.connector.trace import ROOT_CAUSE_PURPOSE, TRACEABILITY_ASSET
from qdspace.connector.trace_data import shift_of
from qdspace.node.client import OperatorClient
from qdspace.node.demo.report import DemoReport
from qdspace.node.errors import NodeError
from qdspace.node.member_ids import peer_name

if TYPE_CHECKING:
    from qdspace.node.localnet.network import LocalNetwork

TITLE = "root cause: an EL defect traced across three tiers, the joint investigation"
CHAPTER = "trace"
OEM = "sunarc"
CELLS = EXCURSION.member  # cellex
WAFERS = "siliwafer"
REGULATOR = "regulator"
DEFECT = "microcrack"
DECOY = f"{FURNACE}/firing_peak_temperature"
WAIT_S = 60.0
FLUSH_TIMEOUT_S = 60


def _wait(what: str, probe: Any, timeout: float = WAIT_S, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(poll_s)
    raise NodeError(f"demo: timed out waiting for {what}")


def _cluster(network: LocalNetwork) -> dict[str, Any]:
    """What SunArc's EL line shows: microcracks per module batch (its own records)."""
    path = network.workdir / "sample-data" / OEM / "el_inspections.jsonl"
    inspected: Counter[str] = Counter()
    cracked: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        inspected[row["batch_id"]] += 1
        if row["verdict"] == "fail" and row["defect_class"] == DEFECT:
            cracked[row["batch_id"]] += 1
    batch = cracked_module_batch()
    return {
        "module_batch": batch,
        "microcracks": cracked[batch],
        "inspected": inspected[batch],
        "elsewhere": sum(n for b, n in cracked.items() if b != batch),
        "other_batches": len(inspected) - 1,
    }


def _agree(client: OperatorClient, provider: str, order: str) -> dict[str, Any]:
    started = time.perf_counter()
    agreed = client.negotiate(provider, TRACEABILITY_ASSET, [ROOT_CAUSE_PURPOSE], orders=[order])
    if agreed["state"] != "FINALIZED":
        raise NodeError(f"traceability with {provider} ended {agreed['state']}: {agreed['reason']}")
    return {
        "provider": provider,
        "order": order,
        "agreement_id": agreed["agreement_id"],
        "negotiation_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _agreements(network: LocalNetwork) -> list[dict[str, Any]]:
    """SunArc -> Cellex for the cells it bought, Cellex -> SiliWafer (at its host) for
    the wafers Cellex bought."""
    with network[OEM].operator(timeout=60) as oem:
        first = {"consumer": OEM, **_agree(oem, CELLS, order_for(CELLS))}
    with network[CELLS].operator(timeout=60) as cells:
        second = {"consumer": CELLS, **_agree(cells, WAFERS, wafer_order(WAFERS))}
    tenant = network.tenants.get(WAFERS)
    if tenant is not None:
        second["host"] = tenant.host.spec.display_name
    return [first, second]


def _simple_cause(cause: dict[str, Any]) -> dict[str, Any]:
    window = next((s for s in cause["path"] if s["level"] == "window"), None)
    return {
        "rank": cause["rank"],
        "member": cause["member"],
        "key": cause["key"],
        "significant": cause["significant"],
        "adjusted_p": cause["adjusted_p"],
        "score": cause["score"],
        "confidence": cause["confidence"],
        "window": window and {"start": window["start"], "end": window["end"]},
    }


def _anchor(network: LocalNetwork, names: tuple[str, ...]) -> None:
    """Anchor what the members hold now (their ledgers do so every few seconds anyway; the
    demo ingested a moment ago): records anchored before a trace asks about them are
    records nobody tidied up for it, and the trace's confidence counts them so."""
    if network.chain is None:
        return
    for name in names:
        with network[name].operator(timeout=FLUSH_TIMEOUT_S + 30) as client:
            client.ledger_flush(FLUSH_TIMEOUT_S)


def _run_trace(network: LocalNetwork) -> dict[str, Any]:
    since, until = oem_inspection_window()
    body = {"since": since.isoformat(), "until": until.isoformat(), "defect_class": DEFECT}
    started = time.perf_counter()
    with network[OEM].operator(timeout=60) as oem:
        trace_id = oem.start_trace(body)["trace_id"]
        done = _wait(
            "the trace's report",
            lambda: (t := oem.trace(trace_id))["state"] != "RUNNING" and t,
        )
        if done["state"] != "DONE":
            raise NodeError(f"the trace ended {done['state']}: {done['error']}")
        seconds = time.perf_counter() - started
        found = oem.trace_report(trace_id)
    doc = found["report"]
    causes = doc["causes"]
    top = causes[0] if causes else None
    window = _simple_cause(top)["window"] if top else None
    decoy = next((c for c in causes if c["key"] == DECOY and c["member"] == CELLS), None)
    return {
        "trace_id": trace_id,
        "selection": body,
        "report_sha256": found["report_sha256"],
        "seconds": round(seconds, 2),
        "implicated": doc["implicated"],
        "partial": doc["partial"],
        "missing": doc["missing"],
        "causes": [_simple_cause(c) for c in causes],
        "path": top["path"] if top else [],
        "evidence": len(top["evidence"]) if top else 0,
        "shift": shift_of(datetime.fromisoformat(window["start"])) if window else "",
        "responsibility": doc["responsibility"],
        "timings_ms": doc["timings_ms"],
        "tiers": sorted(k.partition(":")[2] for k in doc["timings_ms"] if k.startswith("tier")),
        "wafer_findings": [c["key"] for c in causes if c["member"] == WAFERS and c["significant"]],
        "decoy": {
            "key": DECOY,
            "rank": decoy["rank"] if decoy else None,
            "significant": bool(decoy and decoy["significant"]),
        },
    }


def _planted() -> dict[str, Any]:
    """What the sample data planted, to hold the trace against."""
    return {
        "member": EXCURSION.member,
        "key": EXCURSION.key,
        "batch": EXCURSION.batch,
        "start": EXCURSION.start.isoformat(),
        "end": EXCURSION.end.isoformat(),
        "shift": EXCURSION.shift,
        "wafers": wafer_batches(CELLS)[2 * (EXCURSION_BATCH - 1) : 2 * EXCURSION_BATCH],
        "wafer_maker": WAFER_MAKERS[WAFERS]["display_name"],
        "decoy": DECOY,
    }


def _actions(today: datetime) -> list[dict[str, Any]]:
    def due(days: int) -> str:
        return (today + timedelta(days=days)).date().isoformat()

    batch = cell_batch(CELLS, EXCURSION_BATCH)
    return [
        {
            "action_id": "A1",
            "kind": "CONTAINMENT",
            "owner": CELLS,
            "due": due(2),
            "title": f"block the remaining cells of {batch}; sort stock coated on {EXCURSION.tool}",
        },
        {
            "action_id": "A2",
            "kind": "ROOT-CAUSE",
            "owner": CELLS,
            "due": due(7),
            "title": f"leak test {EXCURSION.tool}; confirm the vacuum excursion as the cause",
        },
        {
            "action_id": "A3",
            "kind": "CORRECTIVE-ACTION",
            "owner": CELLS,
            "due": due(14),
            "title": f"replace the door seal; interlock {EXCURSION.tool} on chamber pressure",
        },
        {
            "action_id": "A4",
            "kind": "VERIFICATION",
            "owner": OEM,
            "due": due(28),
            "title": "EL re-inspection of the next three module batches from Cellex cells",
        },
    ]


class _Parties:
    """Both sides' operator clients, and the states each side's node showed, in order."""

    def __init__(self, oem: OperatorClient, supplier: OperatorClient) -> None:
        self.clients = {OEM: oem, CELLS: supplier}
        self.seen: dict[str, list[str]] = {OEM: [], CELLS: []}

    def saw(self, who: str, case: dict[str, Any]) -> dict[str, Any]:
        if not self.seen[who] or self.seen[who][-1] != case["state"]:
            self.seen[who].append(case["state"])
        return case

    def show(self, who: str, case_id: str) -> dict[str, Any]:
        return self.saw(who, self.clients[who].investigations.get(case_id))

    def move(self, who: str, case_id: str, move: str, note: str) -> dict[str, Any]:
        return self.saw(who, self.clients[who].investigations.move(case_id, move, note))

    def until(self, who: str, case_id: str, what: str, done: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            case = self.show(who, case_id)
            return case if done(case) else None

        found: dict[str, Any] = _wait(f"{who} to see the case {what}", probe)
        return found

    def actions_done(self, who: str, case_id: str, actions: list[dict[str, Any]]) -> None:
        for action in actions:
            if action["owner"] == who:
                self.clients[who].investigations.action_done(case_id, action["action_id"], "done")


def _investigate(network: LocalNetwork, trace: dict[str, Any]) -> dict[str, Any]:
    """Open, acknowledge, accept, do the actions, close: both sides' moves, each signed."""
    module = trace["implicated"][0] if trace["implicated"] else cracked_module_batch()
    cells: list[str] = next((s["ids"] for s in trace["path"] if s["member"] == CELLS), [])
    top = trace["causes"][0]["key"] if trace["causes"] else "nothing"
    body = {
        "peer": CELLS,
        "kind": "INVESTIGATION",
        "severity": "MAJOR",
        "subject": f"EL microcrack cluster in module batch {module}",
        "description": f"root-cause trace {trace['trace_id']} ranks {top} first",
        "batch_ids": [module, *cells],
        "trace_report_id": trace["trace_id"],
        "actions": _actions(datetime.now(UTC)),
    }
    started = time.perf_counter()
    with network[OEM].operator(timeout=60) as oem, network[CELLS].operator(timeout=60) as cx:
        p = _Parties(oem, cx)
        case_id = p.saw(OEM, oem.investigations.open(body))["case_id"]
        p.until(CELLS, case_id, "received", lambda c: c["state"] == "RECEIVED")
        p.move(CELLS, case_id, "ack", "checking our PECVD logs")
        p.move(CELLS, case_id, "accept", "the excursion is confirmed on our side")
        p.until(OEM, case_id, "accepted", lambda c: c["state"] == "ACCEPTED")
        p.actions_done(CELLS, case_id, body["actions"])
        mine = sum(1 for a in body["actions"] if a["owner"] == OEM)
        p.until(OEM, case_id, f"{CELLS}'s actions done", lambda c: c["open_actions"] == mine)
        p.actions_done(OEM, case_id, body["actions"])
        closed = p.move(OEM, case_id, "close", "every action done")
        theirs = p.until(CELLS, case_id, "closed", lambda c: c["state"] == "CLOSED")
    return {
        "case_id": case_id,
        "opener_id": closed["opener_id"],
        "severity": body["severity"],
        "subject": body["subject"],
        "batch_ids": body["batch_ids"],
        "trace_report_id": closed["trace_report_id"],
        "actions": [
            {k: a[k] for k in ("action_id", "kind", "owner_id", "due", "state", "title")}
            | {"owner": peer_name(a["owner_id"])}
            for a in closed["actions"]
        ],
        "events": [
            [e["step"], peer_name(e["author_id"]), e["action_id"]] for e in closed["events"]
        ],
        "states_seen": p.seen,
        "state": {OEM: closed["state"], CELLS: theirs["state"]},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _regulator(
    network: LocalNetwork, trace: dict[str, Any], case: dict[str, Any]
) -> list[dict[str, Any]]:
    """The regulator fetches each proof from the member's regulator API and checks it
    against the chain itself; for the report also that the anchored bytes are the ones
    SunArc's node shows."""
    from qdspace.node.demo.ledger import Regulator

    _anchor(network, (OEM, CELLS))
    closure = f"{case['opener_id']}:{case['case_id']}"
    checks = [
        (OEM, "trace_report", trace["trace_id"]),
        (OEM, "quality_case", closure),
        (CELLS, "quality_case", closure),
    ]
    out = []
    reg = Regulator(network)
    try:
        for member, kind, ref in checks:
            checked, proof = reg.verify(member, kind, ref)
            row = dict(checked.__dict__)
            if kind == "trace_report":
                row["record_is_report"] = (
                    proof["record_sha256"].removeprefix("0x") == trace["report_sha256"]
                )
            out.append(row)
    finally:
        reg.close()
    return out


def trace_step(network: LocalNetwork, report: DemoReport) -> None:
    """The chapter: see the module docstring."""
    clock = time.monotonic()
    cluster = _cluster(network)
    agreements = _agreements(network)
    _anchor(network, (OEM, CELLS))
    trace = _run_trace(network)
    case = _investigate(network, trace)
    verified: list[dict[str, Any]] | str = (
        "the network runs without a chain"
        if network.chain is None
        else _regulator(network, trace, case)
    )
    report.chapters[CHAPTER] = {
        "cluster": cluster,
        "agreements": agreements,
        "planted": _planted(),
        "trace": trace,
        "investigation": case,
        "regulator": verified,
        "seconds": round(time.monotonic() - clock, 2),
    }
    refs = report.chapters.setdefault("ledger_refs", [])
    refs.append([OEM, "trace_report", trace["trace_id"]])
