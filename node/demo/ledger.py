"""Demo chapter: the regulator checks members' records against the chain.

Every member node anchors what it stored (inspection records one leaf each, other QDM
tables in batches, agreements and deletion receipts as the contract chapters enqueue them).
Here the regulator, with nothing but its credential and read access to the chain, fetches
proofs from a supplier's node and verifies each one itself; then a record is changed in the
supplier's database behind the node's back and the same check fails.

``ledger_step`` finds what to verify by itself: one inspection batch of Cellex, and every
agreement and deletion receipt any member anchored (the latest few). Chapters that create
such records can name them explicitly in ``report.chapters['ledger_refs']`` as a list of
``[member, kind, ref_id]``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qdspace.connector.sample import cell_batch
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.proofs import ConfirmationCache, InclusionProof, verify_proof
from qdspace.ledger.verify import verify_document
from qdspace.node.client import OperatorClient
from qdspace.node.demo.report import DemoReport

if TYPE_CHECKING:
    from qdspace.node.localnet.network import LocalNetwork

TITLE = "regulator verifies records against the chain"
CHAPTER = "ledger"
SUPPLIER = "cellex"
REGULATOR = "regulator"
INSPECTION_BATCH_N = 7
MAX_PER_KIND = 3
FLUSH_TIMEOUT_S = 120


@dataclass(frozen=True)
class Checked:
    member: str
    kind: str
    ref_id: str
    valid: bool
    reason: str
    root: str
    block: int
    tx: str


class Regulator:
    """The regulator's side: one credential and connection per member, one chain client."""

    def __init__(self, network: LocalNetwork) -> None:
        assert network.chain is not None
        self.network = network
        self.rpc_url = network.chain.url
        self.keys = network[REGULATOR].keys()
        self.confirmed = ConfirmationCache()  # ask the chain once per batch root
        self._http: dict[str, OperatorClient] = {}
        self._chain: dict[str, LedgerClient] = {}

    def http(self, member: str) -> OperatorClient:
        """A client for ``member``'s regulator API carrying a fresh credential for it."""
        if member not in self._http:
            url = self.network[member].regulator_url  # the member's regulator listener
            self._http[member] = OperatorClient.for_regulator(self.keys, url, timeout=60)
        return self._http[member]

    def verify(self, member: str, kind: str, ref_id: str) -> tuple[Checked, dict[str, Any]]:
        """Fetch the proof from the member, then verify it independently against the chain."""
        proof = self.http(member).regulator_proof(kind, ref_id)["proof"]
        parsed = InclusionProof.parse(json.dumps(proof))
        contract = parsed.contract
        if contract not in self._chain:
            self._chain[contract] = LedgerClient(self.rpc_url, contract)
        verdict = verify_proof(parsed, self._chain[contract], self.confirmed)
        checked = Checked(
            member,
            kind,
            ref_id,
            verdict.valid,
            verdict.reason,
            parsed.root,
            parsed.block_number,
            parsed.tx_hash,
        )
        return checked, proof

    def close(self) -> None:
        for client in self._http.values():
            client.close()


def _flush_all(network: LocalNetwork) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, member in network.members.items():
        with member.operator(timeout=FLUSH_TIMEOUT_S + 30) as client:
            out[name] = client.ledger_flush(FLUSH_TIMEOUT_S)["status"]
    return out


def _contract_refs(network: LocalNetwork, report: DemoReport) -> list[tuple[str, str, str]]:
    named = [tuple(x) for x in report.chapters.get("ledger_refs", [])]
    refs: list[tuple[str, str, str]] = [(str(m), str(k), str(r)) for m, k, r in named]
    # contract chapters name their agreements and receipts; otherwise take the latest few.
    # Signed global model versions of a federated job are anchored by their coordinator.
    kinds = ("model_version",) if refs else ("agreement", "deletion_receipt", "model_version")
    for name, member in network.members.items():
        with member.operator() as client:
            for kind in kinds:
                leaves = client.ledger_leaves(kind, limit=MAX_PER_KIND)
                refs += [(name, kind, leaf["ref_id"]) for leaf in leaves if leaf["anchored"]]
    return refs


def _batch_inspections(network: LocalNetwork) -> tuple[str, list[str]]:
    batch = cell_batch(SUPPLIER, INSPECTION_BATCH_N)
    path = network.workdir / "sample-data" / SUPPLIER / "el_inspections.jsonl"
    ids: list[str] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the sample's deliberately broken line
        if isinstance(row, dict) and row.get("batch_id") == batch:
            ids.append(str(row["inspection_id"]))
    return batch, ids


def _tamper(network: LocalNetwork, inspection_id: str) -> tuple[str, str]:
    """Flip a stored verdict in the supplier's database, as a dishonest edit would."""
    with sqlite3.connect(network[SUPPLIER].layout.database) as db:
        (old,) = db.execute(
            "SELECT verdict FROM qdm_inspection WHERE inspection_id = ?", (inspection_id,)
        ).fetchone()
        new = "pass" if old in ("fail", "NOK") else "fail"
        db.execute(
            "UPDATE qdm_inspection SET verdict = ? WHERE inspection_id = ?", (new, inspection_id)
        )
    return old, new


def ledger_step(network: LocalNetwork, report: DemoReport) -> None:
    """The chapter: anchor, verify a batch, agreements and receipts, catch a tampered record."""
    if network.chain is None:
        report.chapters[CHAPTER] = {"skipped": "the network runs without a chain"}
        return
    clock = time.monotonic()
    status = _flush_all(network)
    seconds = {"anchor_flush": time.monotonic() - clock}
    batch, ids = _batch_inspections(network)
    reg = Regulator(network)
    try:
        clock = time.monotonic()
        checked = [reg.verify(SUPPLIER, "inspection", i)[0] for i in ids]
        seconds["inspection_batch"] = time.monotonic() - clock
        others = [reg.verify(m, k, r)[0] for m, k, r in _contract_refs(network, report)]
        good_proof = reg.verify(SUPPLIER, "inspection", ids[0])[1]
        victim = ids[len(ids) // 2]
        old, new = _tamper(network, victim)
        tampered, proof = reg.verify(SUPPLIER, "inspection", victim)
        _tamper(network, victim)  # put the record back for later chapters
        passport = reg.http(SUPPLIER).regulator_passport()
    finally:
        reg.close()
    proof_dir = network.workdir / "ledger"
    proof_dir.mkdir(exist_ok=True)
    (proof_dir / f"proof-{ids[0]}.json").write_text(json.dumps(good_proof, indent=2))
    # the same proof in its compact binary spelling; `qdspace verify` reads both
    (proof_dir / f"proof-{ids[0]}.qdp").write_bytes(InclusionProof.parse(good_proof).to_bytes())
    (proof_dir / f"proof-{victim}-tampered.json").write_text(json.dumps(proof, indent=2))
    (proof_dir / "passport-cellex.json").write_text(json.dumps(passport, indent=2))
    _, passport_verdict = verify_document(json.dumps(passport), network.chain.url)
    report.chapters[CHAPTER] = {
        "chain": network.chain.url,
        "anchoring": status,
        "inspection_batch": batch,
        "inspections": [c.__dict__ for c in checked],
        "contracts": [c.__dict__ for c in others],
        "tampered": {**tampered.__dict__, "changed": f"verdict {old} -> {new}"},
        "passport": {"valid": passport_verdict.valid, "reason": passport_verdict.reason},
        "files": str(proof_dir),
        "seconds": seconds,
    }


def print_ledger(console: Console, report: DemoReport) -> None:
    """The chapter's part of the summary."""
    doc = report.chapters.get(CHAPTER)
    if not doc or "skipped" in doc:
        return
    insp = doc["inspections"]
    valid = sum(1 for c in insp if c["valid"])
    roots = {c["root"] for c in insp}
    table = Table(title="regulator checks against the chain", title_justify="left")
    for col in ("member", "record", "verdict", "root", "block", "transaction"):
        table.add_column(col)
    first = insp[0] if insp else None
    rows = [
        *([first] if first else []),
        *doc["contracts"],
        doc["tampered"],
    ]
    for c in rows:
        failed = c["reason"].split(":")[0]
        mark = "[green]valid[/green]" if c["valid"] else f"[red]INVALID[/red] ({failed})"
        table.add_row(
            c["member"],
            f"{c['kind']} {c['ref_id']}",
            mark,
            c["root"][:10] + "..",
            str(c["block"]),
            c["tx"][:10] + "..",
        )
    console.print(table)
    console.print(
        f"inspection batch {doc['inspection_batch']} of {SUPPLIER}: {valid}/{len(insp)} records "
        f"verified against {len(roots)} anchored root(s)",
        highlight=False,
    )
    if not doc["contracts"]:
        console.print("no agreement or deletion receipt was anchored yet", highlight=False)
    t = doc["tampered"]
    console.print(
        f"tampered record {t['ref_id']} ({t['changed']}): "
        + ("[green]caught[/green]: " if not t["valid"] else "[red]NOT CAUGHT[/red]: ")
        + t["reason"],
        highlight=False,
    )
    console.print(
        f"quality data passport of {SUPPLIER}: "
        + ("valid" if doc["passport"]["valid"] else f"INVALID {doc['passport']['reason']}"),
        highlight=False,
    )
    command = (
        f"qdspace verify {doc['files']}/proof-{first['ref_id'] if first else ''}"
        f".json --rpc {doc['chain']}"
    )
    if report.kept_running:
        console.print(f"check yourself: {command}", highlight=False, soft_wrap=True)
    else:  # the chain stops with the demo: the command would find nobody at that URL
        console.print(
            f"check yourself: the chain stops with this demo; run `qdspace demo "
            f"--keep-running` and then {command}",
            highlight=False,
            soft_wrap=True,
        )
