"""A producer's answer to a trace question, and the bounds every answer is held to.

A customer under a traceability agreement asks a producer about batches it bought;
the producer answers for its part (`TierAnswer`): the implicated batches' genealogy
down to what it bought, its local findings (`rootcause.Finding`, never raw rows), the
answers its own producers gave it in turn (`upstream`) and the tiers that did not
answer in time (`missing`), so a slow or offline member makes the trace partial,
not failed, and the report can say which tier is missing.

Every answer crossed a company border and is an attack until checked:
`check_answer` bounds sizes, depth (a producer cannot nest answers beyond
`MAX_DEPTH`), texts and numbers before anything reads it. Pure: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from qdspace.connector.errors import ConnectorError
from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import Finding

#: the purpose a traceability agreement grants (ODRL ``purpose isAnyOf``)
ROOT_CAUSE_PURPOSE = "root-cause-analysis"
#: the asset id of the traceability offer in every producer's catalog
TRACEABILITY_ASSET = "traceability"

MAX_BATCHES = 500  # batch ids in one question
MAX_ID = 64
MAX_DEPTH = 4  # tiers below the asker an answer may describe
MAX_PATH = MAX_DEPTH + 1  # members already on the way down (cycle guard)
MAX_FINDINGS = 40  # findings per tier
MAX_EVIDENCE = 50
MAX_WINDOWS = 20
MAX_LINKS = 500
MAX_PARENTS = 64
MAX_UPSTREAM = 8  # producers one tier asks in turn
MAX_TEXT = 300


class TraceError(ConnectorError, ValueError):
    """A trace question or answer outside the bounds (too many ids, too deep, malformed)."""


class TraceRefused(ConnectorError, PermissionError):
    """No traceability answer for these batches to this caller. The same refusal for a
    batch that does not exist, one sold to somebody else and a missing agreement."""


@dataclass(frozen=True)
class BatchLink:
    """A batch of the answering tier and the batches it was made from."""

    batch: BatchInfo
    parents: tuple[BatchInfo, ...]


@dataclass(frozen=True)
class MissingTier:
    """A producer that was to be asked and gave no answer (``reason`` says why)."""

    member: str
    batch_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class TierAnswer:
    """One member's part of a trace (see the module docstring)."""

    member: str
    implicated: tuple[str, ...]
    comparable_n: int
    links: tuple[BatchLink, ...]
    findings: tuple[Finding, ...]
    upstream: tuple[TierAnswer, ...] = ()
    missing: tuple[MissingTier, ...] = ()
    elapsed_ms: float = 0.0

    def walk(self, depth: int = 0) -> Iterator[tuple[int, TierAnswer]]:
        """Every tier of the answer with its depth below this one, top-down."""
        yield depth, self
        for answer in self.upstream:
            yield from answer.walk(depth + 1)

    def all_missing(self) -> list[MissingTier]:
        return [m for _, tier in self.walk() for m in tier.missing]


def check_id(value: str, what: str) -> str:
    if not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise TraceError(f"{what} must be 1..{MAX_ID} printable characters, got {value[:40]!r}")
    return value


def check_batch_ids(batch_ids: list[str]) -> frozenset[str]:
    """The batch ids of a question: 1..MAX_BATCHES valid ids (duplicates folded)."""
    if not batch_ids:
        raise TraceError("a trace question names at least one batch")
    if len(batch_ids) > MAX_BATCHES:
        raise TraceError(f"a trace question names at most {MAX_BATCHES} batches")
    return frozenset(check_id(b, "batch id") for b in batch_ids)


def _text(value: str, what: str) -> None:
    if len(value) > MAX_TEXT or not value.isprintable():
        raise TraceError(f"{what}: at most {MAX_TEXT} printable characters")


def _finite(value: float, what: str, low: float = -math.inf, high: float = math.inf) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise TraceError(f"{what} must be a finite number in [{low}, {high}], got {value!r}")


def _check_finding(f: Finding, where: str) -> None:
    _text(f.key, f"{where} finding key")
    _text(f.note, f"{where} finding note")
    if f.kind not in ("numeric", "categorical"):
        raise TraceError(f"{where}: finding kind {f.kind[:20]!r}")
    for name in ("effect", "excess_out_of_control", "level_out_of_control"):
        _finite(getattr(f, name), f"{where} {f.key} {name}", -1.0, 1.0)
    for name in ("p_value", "adjusted_p"):
        _finite(getattr(f, name), f"{where} {f.key} {name}", 0.0, 1.0)
    for name in ("implicated_center", "comparable_center"):
        if (value := getattr(f, name)) is not None:
            _finite(value, f"{where} {f.key} {name}")
    if f.implicated_n < 0 or f.comparable_n < 0:
        raise TraceError(f"{where} {f.key}: negative counts")
    if len(f.evidence) > MAX_EVIDENCE or len(f.windows) > MAX_WINDOWS:
        raise TraceError(f"{where} {f.key}: too much evidence")
    for e in f.evidence:
        _text(e, f"{where} evidence id")
    for w in f.windows:
        if len(w.batches) > MAX_BATCHES or w.end < w.start or w.readings < 0:
            raise TraceError(f"{where} {f.key}: malformed window")
        _finite(w.peak_sigma, f"{where} {f.key} peak sigma")


def check_answer(answer: TierAnswer, depth: int = 0, *, member: str | None = None) -> None:
    """Raise `TraceError` unless `answer` is within every bound; `member`, when given,
    is who must have answered at the top (a producer cannot answer as another)."""
    where = f"answer of {answer.member[:MAX_ID]!r}"
    if depth > MAX_DEPTH:
        raise TraceError(f"{where}: nested deeper than {MAX_DEPTH} tiers")
    if member is not None and answer.member != member:
        raise TraceError(f"{where}: answered by {answer.member[:MAX_ID]!r}, asked {member!r}")
    check_id(answer.member, "member")
    if len(answer.implicated) > MAX_BATCHES or len(answer.links) > MAX_LINKS:
        raise TraceError(f"{where}: too many batches")
    if len(answer.findings) > MAX_FINDINGS or len(answer.upstream) > MAX_UPSTREAM:
        raise TraceError(f"{where}: too many findings or upstream answers")
    if len(answer.missing) > MAX_UPSTREAM or answer.comparable_n < 0:
        raise TraceError(f"{where}: malformed")
    _finite(answer.elapsed_ms, f"{where} elapsed", 0.0, 1e9)
    for b in answer.implicated:
        check_id(b, f"{where} batch id")
    for link in answer.links:
        if len(link.parents) > MAX_PARENTS:
            raise TraceError(
                f"{where}: batch {link.batch.batch_id[:MAX_ID]!r} has too many parents"
            )
        for info in (link.batch, *link.parents):
            check_id(info.batch_id, f"{where} batch id")
            _text(info.material + info.kind + info.producer, f"{where} batch")
            _finite(info.quantity, f"{where} quantity", 0.0)
    for m in answer.missing:
        check_id(m.member, f"{where} missing member")
        _text(m.reason, f"{where} missing reason")
        if len(m.batch_ids) > MAX_BATCHES:
            raise TraceError(f"{where}: too many missing batches")
    for f in answer.findings:
        _check_finding(f, where)
    for up in answer.upstream:
        check_answer(up, depth + 1)
