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

The report's canonical bytes (`report_bytes`: sorted-key JSON) are what the node stores,
hashes and anchors; a regulator later hashes the bytes the node shows and compares.
Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qdspace.connector.rootcause import DEFAULT_ALPHA, Finding, responsibility
from qdspace.connector.trace import MissingTier, TierAnswer

#: non-significant findings listed after the significant ones (what was looked at)
MAX_WEAK_CAUSES = 3


@dataclass(frozen=True)
class PathStep:
    """One step from the OEM's batch to a cause: batches of a tier, or a process window."""

    member: str
    level: str  # the batches' kind ("module", "cell", "wafer") or "window"
    ids: tuple[str, ...]
    start: str = ""
    end: str = ""


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


@dataclass(frozen=True)
class TraceReport:
    trace_id: str
    selection: Mapping[str, Any]
    started_at: str
    finished_at: str
    implicated: tuple[str, ...]
    causes: tuple[Cause, ...]
    responsibility: Mapping[str, float]
    missing: tuple[MissingTier, ...]
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


def _kind_of(tier: TierAnswer, batch_ids: Sequence[str]) -> str:
    kinds = {link.batch.kind for link in tier.links if link.batch.batch_id in batch_ids}
    return "/".join(sorted(k for k in kinds if k)) or "batch"


def _batches_of(finding: Finding, tier: TierAnswer) -> tuple[str, ...]:
    found = sorted({b for w in finding.windows for b in w.batches})
    return tuple(found) if found else tuple(sorted(tier.implicated))


def _path(chain: list[TierAnswer], finding: Finding) -> tuple[PathStep, ...]:
    """OEM batch -> ... -> the cause's batches -> process window -> the batches they were
    made from (one tier further down, where known)."""
    tier = chain[-1]
    batches = _batches_of(finding, tier)
    steps = [PathStep(tier.member, _kind_of(tier, batches), batches)]
    lower = set(batches)
    for above in reversed(chain[:-1]):  # back up: which of its batches used ours
        mine = tuple(
            sorted(
                link.batch.batch_id
                for link in above.links
                if lower & {p.batch_id for p in link.parents}
            )
        )
        steps.insert(0, PathStep(above.member, _kind_of(above, mine), mine))
        lower = set(mine)
    if finding.windows:
        start = min(w.start for w in finding.windows).isoformat()
        end = max(w.end for w in finding.windows).isoformat()
        steps.append(PathStep(tier.member, "window", (finding.key,), start, end))
    else:
        steps.append(PathStep(tier.member, "factor", (finding.key,)))
    parents = sorted(
        {
            (p.producer, p.kind, p.batch_id)
            for link in tier.links
            if link.batch.batch_id in batches
            for p in link.parents
        }
    )
    for producer in sorted({p for p, _, _ in parents}):
        ids = tuple(b for p, _, b in parents if p == producer)
        kind = "/".join(sorted({k for p, k, _ in parents if p == producer and k})) or "batch"
        steps.append(PathStep(producer, kind, ids))
    return tuple(steps)


def _cause(rank: int, chain: list[TierAnswer], f: Finding, alpha: float) -> Cause:
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
        path=_path(chain, f),
        evidence=f.evidence,
    )


def rank_causes(root: TierAnswer, alpha: float = DEFAULT_ALPHA) -> list[Cause]:
    """Significant findings of every tier by confidence-weighted score, then the few
    strongest of the rest (marked not significant)."""
    pool = [(chain, f) for chain in _chains(root) for f in chain[-1].findings]
    pool.sort(key=lambda cf: (not cf[1].significant(alpha), -cf[1].score, cf[1].key))
    strong = [cf for cf in pool if cf[1].significant(alpha)]
    weak = [cf for cf in pool if not cf[1].significant(alpha) and cf[1].strength > 0]
    chosen = strong + weak[:MAX_WEAK_CAUSES]
    return [_cause(i + 1, chain, f, alpha) for i, (chain, f) in enumerate(chosen)]


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
        missing=tuple(root.all_missing()),
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
                    for s in c.path
                ],
            }
            for c in report.causes
        ],
    }


def report_bytes(report: TraceReport) -> bytes:
    """The canonical bytes of a report: what is stored, hashed and anchored."""
    doc = report_to_json(report)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
