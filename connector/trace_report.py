"""The trace report: candidate causes ranked across tiers, with the path that leads to each.

The OEM's node gathers one `TierAnswer` per member (its own at the top, its producers'
below, theirs below those) and turns them into one report: every significant finding
of every tier is a candidate cause, ranked by its strength weighted by the confidence
of the data behind it (`rootcause.Finding.score`); each cause carries the path from the
OEM's batch down to it (module batch -> cell batch -> process window -> wafer batch),
its evidence ids, its confidence and the member that holds the evidence; where several
members are implicated, each one's share of responsibility is weighted by the
confidence of its data (`rootcause.responsibility`). Tiers that did not answer are
named, so a partial report says what it could not see.

Only the producers the OEM asked answered in their own name; every level below them was
relayed by one of them, so each cause and each missing tier of such a level names the
member that reported it (``reported_by``): nobody should read a relayed level as its
member's own word. Every level that reaches the report was signed by its own member for
this trace and verified by the OEM's node (`connector.trace_seal.verified`); one that did
not verify is already a missing tier saying why, so no share of responsibility rests on
a level its member cannot be held to.

A path step lists at most `MAX_STEP_IDS` batch ids (and how many more there were), and
the tiers' genealogy is indexed once per report, not scanned per cause: a report is as
large and as slow as its causes, not as its tiers' genealogy.

The report's canonical bytes (`report_bytes`: sorted-key JSON) are what the node stores,
hashes and anchors; a regulator later hashes the bytes the node shows and compares.
Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DEFAULT_ALPHA, Finding, responsibility
from qdspace.connector.trace import MAX_UPSTREAM, TierAnswer

#: non-significant findings listed after the significant ones (what was looked at)
MAX_WEAK_CAUSES = 3
#: batch ids named in one step of a cause's path (the rest are counted)
MAX_STEP_IDS = 10


@dataclass(frozen=True)
class PathStep:
    """One step from the OEM's batch to a cause: batches of a tier, or a process window."""

    member: str
    level: str  # the batches' kind ("module", "cell", "wafer") or "window"
    ids: tuple[str, ...]
    start: str = ""
    end: str = ""
    more: int = 0  # ids beyond `MAX_STEP_IDS`, not listed


def _step(member: str, level: str, ids: Sequence[str]) -> PathStep:
    return PathStep(member, level, tuple(ids[:MAX_STEP_IDS]), more=max(len(ids) - MAX_STEP_IDS, 0))


@dataclass(frozen=True)
class Cause:
    rank: int
    member: str
    tier: int
    key: str
    kind: str
    significant: bool
    score: float
    strength: float
    adjusted_p: float
    effect: float
    confidence: dict[str, float | None]
    path: tuple[PathStep, ...]
    evidence: tuple[str, ...]
    reported_by: str = ""  # the member that relayed this cause's level, if not its own


@dataclass(frozen=True)
class ReportedMissing:
    """A tier that did not answer, and who said so when it is not the OEM's own word."""

    member: str
    batch_ids: tuple[str, ...]
    reason: str
    reported_by: str = ""


@dataclass(frozen=True)
class TraceReport:
    trace_id: str
    selection: Mapping[str, Any]
    started_at: str
    finished_at: str
    implicated: tuple[str, ...]
    causes: tuple[Cause, ...]
    responsibility: Mapping[str, float]
    missing: tuple[ReportedMissing, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def _chains(root: TierAnswer) -> list[list[TierAnswer]]:
    """Every tier with the chain of tiers from the root down to it."""
    out: list[list[TierAnswer]] = []

    def visit(tier: TierAnswer, chain: list[TierAnswer]) -> None:
        here = [*chain, tier]
        out.append(here)
        for up in tier.upstream:
            visit(up, here)

    visit(root, [])
    return out


def _reported_by(chain: Sequence[TierAnswer]) -> str:
    """Who relayed the last tier of `chain` to the root: the producer the root asked,
    for every tier below it ("" for the root's own tier and its producers' own)."""
    return chain[1].member if len(chain) > 2 else ""


@dataclass(frozen=True)
class _Genealogy:
    """One tier's links, indexed: a batch's kind, its parents, and a parent's children."""

    kind: Mapping[str, str]
    parents: Mapping[str, tuple[BatchInfo, ...]]
    children: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, tier: TierAnswer) -> _Genealogy:
        children: dict[str, set[str]] = {}
        for link in tier.links:
            for p in link.parents:
                children.setdefault(p.batch_id, set()).add(link.batch.batch_id)
        return cls(
            {link.batch.batch_id: link.batch.kind for link in tier.links},
            {link.batch.batch_id: link.parents for link in tier.links},
            {k: frozenset(v) for k, v in children.items()},
        )

    def kind_of(self, batch_ids: Iterable[str]) -> str:
        kinds = {k for b in batch_ids if (k := self.kind.get(b, ""))}
        return "/".join(sorted(kinds)) or "batch"

    def made_from(self, batch_ids: Iterable[str]) -> set[str]:
        """Which of this tier's batches used any of `batch_ids`."""
        return {c for b in batch_ids for c in self.children.get(b, ())}


def _batches_of(finding: Finding, tier: TierAnswer) -> tuple[str, ...]:
    found = sorted({b for w in finding.windows for b in w.batches})
    return tuple(found) if found else tuple(sorted(tier.implicated))


def _path(
    chain: list[TierAnswer], finding: Finding, index: Mapping[int, _Genealogy]
) -> tuple[PathStep, ...]:
    """OEM batch -> ... -> the cause's batches -> process window -> the batches they were
    made from (one tier further down, where known)."""
    tier = chain[-1]
    own = index[id(tier)]
    batches = _batches_of(finding, tier)
    steps = [_step(tier.member, own.kind_of(batches), batches)]
    lower: set[str] = set(batches)
    for above in reversed(chain[:-1]):  # back up: which of its batches used ours
        genealogy = index[id(above)]
        lower = genealogy.made_from(lower)
        steps.insert(0, _step(above.member, genealogy.kind_of(lower), sorted(lower)))
    if finding.windows:
        start = min(w.start for w in finding.windows).isoformat()
        end = max(w.end for w in finding.windows).isoformat()
        steps.append(PathStep(tier.member, "window", (finding.key,), start, end))
    else:
        steps.append(PathStep(tier.member, "factor", (finding.key,)))
    by_producer: dict[str, dict[str, set[str]]] = {}  # producer -> kind -> batch ids
    for b in batches:
        for p in own.parents.get(b, ()):
            by_producer.setdefault(p.producer, {}).setdefault(p.kind, set()).add(p.batch_id)
    for producer in sorted(by_producer)[:MAX_UPSTREAM]:
        kinds = by_producer[producer]
        ids = sorted({b for group in kinds.values() for b in group})
        steps.append(_step(producer, "/".join(sorted(k for k in kinds if k)) or "batch", ids))
    return tuple(steps)


def _cause(
    rank: int,
    chain: list[TierAnswer],
    f: Finding,
    alpha: float,
    index: Mapping[int, _Genealogy],
) -> Cause:
    c = f.confidence
    return Cause(
        rank=rank,
        member=chain[-1].member,
        tier=len(chain) - 1,
        key=f.key,
        kind=f.kind,
        significant=f.significant(alpha),
        score=round(f.score, 6),
        strength=round(f.strength, 6),
        adjusted_p=f.adjusted_p,
        effect=f.effect,
        confidence={
            "score": round(c.score, 4),
            "completeness": c.completeness,
            "anchored": c.anchored,
            "calibrated": c.calibrated,
        },
        path=_path(chain, f, index),
        evidence=f.evidence,
        reported_by=_reported_by(chain),
    )


def rank_causes(root: TierAnswer, alpha: float = DEFAULT_ALPHA) -> list[Cause]:
    """Significant findings of every tier by confidence-weighted score, then the few
    strongest of the rest (marked not significant)."""
    pool = [(chain, f) for chain in _chains(root) for f in chain[-1].findings]
    pool.sort(key=lambda cf: (not cf[1].significant(alpha), -cf[1].score, cf[1].key))
    strong = [cf for cf in pool if cf[1].significant(alpha)]
    weak = [cf for cf in pool if not cf[1].significant(alpha) and cf[1].strength > 0]
    chosen = strong + weak[:MAX_WEAK_CAUSES]
    index = {id(tier): _Genealogy.of(tier) for _, tier in root.walk()}
    return [_cause(i + 1, chain, f, alpha, index) for i, (chain, f) in enumerate(chosen)]


def _missing(root: TierAnswer) -> tuple[ReportedMissing, ...]:
    return tuple(
        ReportedMissing(m.member, m.batch_ids, m.reason, chain[1].member if len(chain) > 1 else "")
        for chain in _chains(root)
        for m in chain[-1].missing
    )


def build_report(
    trace_id: str,
    selection: Mapping[str, Any],
    root: TierAnswer,
    started_at: datetime,
    finished_at: datetime,
    timings_ms: Mapping[str, float],
    alpha: float = DEFAULT_ALPHA,
) -> TraceReport:
    by_member: dict[str, list[Finding]] = {}
    for _, tier in root.walk():
        by_member.setdefault(tier.member, []).extend(tier.findings)
    return TraceReport(
        trace_id=trace_id,
        selection=dict(selection),
        started_at=started_at.isoformat(),
        finished_at=finished_at.isoformat(),
        implicated=tuple(sorted(root.implicated)),
        causes=tuple(rank_causes(root, alpha)),
        responsibility=responsibility(by_member, alpha),
        missing=_missing(root),
        timings_ms=dict(timings_ms),
    )


def report_to_json(report: TraceReport) -> dict[str, Any]:
    return {
        "trace_id": report.trace_id,
        "selection": dict(report.selection),
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "implicated": list(report.implicated),
        "partial": report.partial,
        "missing": [
            {"member": m.member, "batch_ids": list(m.batch_ids), "reason": m.reason}
            | ({"reported_by": m.reported_by} if m.reported_by else {})
            for m in report.missing
        ],
        "responsibility": dict(report.responsibility),
        "timings_ms": {k: round(v, 3) for k, v in report.timings_ms.items()},
        "causes": [
            {
                "rank": c.rank,
                "member": c.member,
                "tier": c.tier,
                "key": c.key,
                "kind": c.kind,
                "significant": c.significant,
                "score": c.score,
                "strength": c.strength,
                "adjusted_p": c.adjusted_p,
                "effect": c.effect,
                "confidence": c.confidence,
                "evidence": list(c.evidence),
                "path": [
                    {"member": s.member, "level": s.level, "ids": list(s.ids)}
                    | ({"start": s.start, "end": s.end} if s.start else {})
                    | ({"more": s.more} if s.more else {})
                    for s in c.path
                ],
            }
            | ({"reported_by": c.reported_by} if c.reported_by else {})
            for c in report.causes
        ],
    }


def report_bytes(report: TraceReport) -> bytes:
    """The canonical bytes of a report: what is stored, hashed and anchored."""
    doc = report_to_json(report)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
