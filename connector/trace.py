"""A producer's answer to a trace question, and the bounds every answer is held to.

A customer under a traceability agreement asks a producer about batches it bought;
the producer answers for its part (`TierAnswer`): the implicated batches' genealogy
down to what it bought, its local findings (`rootcause.Finding`, never raw rows), the
answers its own producers gave it in turn (`upstream`) and the tiers that did not
answer in time (`missing`), so a slow or offline member makes the trace partial,
not failed, and the report can say which tier is missing.

Every answer crossed a company border and is an attack until checked:
`check_answer` bounds sizes, depth (a producer cannot nest answers beyond
`MAX_DEPTH`), texts and numbers before anything reads it. Per-level bounds are not
enough: eight nested levels per level, four deep, each at its limits, make a reply that
takes minutes to rank and a report of gigabytes, so the answer as a whole is bounded too
(`AnswerSize`, `MAX_LEVELS` and the ``MAX_TOTAL_*`` limits), and the wire decoder checks
the same counts on the message before it builds a single object. Each tier's answer is
checked against its question: it implicates only batches it was asked about, links only
batches it made itself (those implicated and the ones they were made from), and each
level it relays must be a producer of the level above it (named among its parents, for
batches that level named as that producer's), appear once and not close a cycle.

Those checks keep a relayed level in its place but cannot tell who wrote it: only the
top level comes from the member asked (mutual TLS), and a producer could invent a level
for any member its own links name, or replay one from an old trace. So every level
carries a `LevelSeal`: its member's Ed25519 signature over the trace's id and nonce, the
member that asked it, the batch ids it was asked about and its own content
(`connector.trace_seal`); the OEM verifies every level and counts none it cannot.

A tier's answer travels up to customers that check it as a whole again, so a tier that
relays its producers' answers must leave room for the levels above them: a producer's
reply is checked at the depth it will sit at and with room for the asker's own level
(`check_answer`'s ``depth`` and ``reserve``). Operator ids never leave
a company raw: `pseudonymize_own` replaces them, with the agreement's pseudonyms, in the
findings a tier sends its customer. Pure: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from qdspace.connector.errors import ConnectorError
from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.pseudonym import Pseudonymizer
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
#: missing tiers of one level: each producer asked, and one entry for those not asked
MAX_MISSING = MAX_UPSTREAM + 1
#: a member id: its name, a dash and 12 hex digits (`node.member_ids`)
MAX_MEMBER_ID = MAX_ID + 13
SIGNATURE_BYTES = 64  # Ed25519
MAX_TEXT = 300
# the answer as a whole, all its levels together
MAX_LEVELS = 16
MAX_TOTAL_LINKS = 4 * MAX_LINKS
MAX_TOTAL_PARENTS = MAX_LINKS * MAX_PARENTS  # one level at its limits
MAX_TOTAL_IDS = 20_000  # implicated, window, missing batch ids and evidence ids
#: categorical factors whose categories name people (`trace_data._operators`)
PERSONAL_FACTORS = ("operator",)
#: evidence ids of these tables point at rows about people
PERSONAL_EVIDENCE = ("qdm_operator_log",)


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
class LevelSeal:
    """A member's signature over its level (`connector.trace_seal`): the member's id,
    the member id that asked it and the batch ids it was asked about, all signed."""

    member_id: str
    asked_by: str
    asked: tuple[str, ...]
    signature: bytes


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
    seal: LevelSeal | None = None

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


def check_batch_count(count: int) -> None:
    """A question names 1..MAX_BATCHES batch ids (checked on a count, before a peer's
    list of them is decoded)."""
    if not count:
        raise TraceError("a trace question names at least one batch")
    if count > MAX_BATCHES:
        raise TraceError(f"a trace question names at most {MAX_BATCHES} batches")


def check_batch_ids(batch_ids: list[str]) -> frozenset[str]:
    """The batch ids of a question: 1..MAX_BATCHES valid ids (duplicates folded)."""
    check_batch_count(len(batch_ids))
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
        for b in w.batches:
            check_id(b, f"{where} {f.key} window batch id")


@dataclass(frozen=True)
class AnswerSize:
    """What an answer holds, all its levels together (see `check_size`)."""

    levels: int = 0
    links: int = 0
    parents: int = 0
    ids: int = 0

    @property
    def weight(self) -> int:
        """How much it holds, all counts together (to find the largest of several)."""
        return self.levels + self.links + self.parents + self.ids

    def __add__(self, other: AnswerSize) -> AnswerSize:
        return AnswerSize(
            self.levels + other.levels,
            self.links + other.links,
            self.parents + other.parents,
            self.ids + other.ids,
        )


def level_size(implicated: int, links: int, parents: int, ids: int, missing: int = 0) -> AnswerSize:
    """One level's part of an `AnswerSize` (`ids`: its findings' window and evidence ids
    and the batch ids it was asked about, `missing`: the batch ids of its missing tiers)."""
    return AnswerSize(1, links, parents, implicated + ids + missing)


def check_size(size: AnswerSize, where: str, reserve: AnswerSize = AnswerSize()) -> None:
    """`TraceError` once an answer, all its levels so far together, is beyond a total;
    `reserve` is kept back for what the asker adds above it (its own level)."""
    for name, value, limit in (
        ("levels", size.levels, MAX_LEVELS - reserve.levels),
        ("batch links", size.links, MAX_TOTAL_LINKS - reserve.links),
        ("parent batches", size.parents, MAX_TOTAL_PARENTS - reserve.parents),
        ("batch and evidence ids", size.ids, MAX_TOTAL_IDS - reserve.ids),
    ):
        if value > limit:
            raise TraceError(f"{where}: more than {limit} {name} in one answer")


def _size(answer: TierAnswer) -> AnswerSize:
    asked = len(answer.seal.asked) if answer.seal is not None else 0
    return level_size(
        len(answer.implicated),
        len(answer.links),
        sum(len(link.parents) for link in answer.links),
        asked
        + sum(len(f.evidence) + sum(len(w.batches) for w in f.windows) for f in answer.findings),
        sum(len(m.batch_ids) for m in answer.missing),
    )


def answer_size(answer: TierAnswer) -> AnswerSize:
    """What `answer` holds, all its levels together."""
    total = AnswerSize()
    for _, tier in answer.walk():
        total += _size(tier)
    return total


def _check_seal(seal: LevelSeal, where: str) -> None:
    """The shape of a level's seal (whether it verifies is the OEM's `trace_seal` check)."""
    for value, what in ((seal.member_id, "member id"), (seal.asked_by, "asker's member id")):
        if not 0 < len(value) <= MAX_MEMBER_ID or not value.isprintable():
            raise TraceError(f"{where}: {what} must be 1..{MAX_MEMBER_ID} printable characters")
    if len(seal.signature) != SIGNATURE_BYTES:
        raise TraceError(f"{where}: a signature is {SIGNATURE_BYTES} bytes")
    if not 0 < len(seal.asked) <= MAX_BATCHES:
        raise TraceError(f"{where}: asked about 1..{MAX_BATCHES} batches")
    for b in seal.asked:
        check_id(b, f"{where} asked batch id")


def _check_level(answer: TierAnswer, where: str) -> None:
    """The bounds of one level on its own."""
    check_id(answer.member, "member")
    if len(answer.implicated) > MAX_BATCHES or len(answer.links) > MAX_LINKS:
        raise TraceError(f"{where}: too many batches")
    if len(answer.findings) > MAX_FINDINGS or len(answer.upstream) > MAX_UPSTREAM:
        raise TraceError(f"{where}: too many findings or upstream answers")
    if len(answer.missing) > MAX_MISSING or answer.comparable_n < 0:
        raise TraceError(f"{where}: malformed")
    if answer.seal is not None:
        _check_seal(answer.seal, where)
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
        for b in m.batch_ids:
            check_id(b, f"{where} missing batch id")
    for f in answer.findings:
        _check_finding(f, where)


def _check_own(answer: TierAnswer, asked: frozenset[str] | None, where: str) -> None:
    """A level speaks of the batches it was asked about (`asked`, when known) and of the
    batches it made itself: every link's batch is its own, implicated or one its other
    links name as made from (a batch made in several steps inside the company)."""
    if asked is not None and (extra := set(answer.implicated) - asked):
        raise TraceError(f"{where}: implicates batch {min(extra)[:MAX_ID]!r}, not asked about")
    ours = set(answer.implicated) | {p.batch_id for link in answer.links for p in link.parents}
    for link in answer.links:
        b = link.batch
        if b.producer != answer.member:
            raise TraceError(f"{where}: links batch {b.batch_id[:MAX_ID]!r} of another producer")
        if b.batch_id not in ours:
            raise TraceError(f"{where}: links batch {b.batch_id[:MAX_ID]!r}, not asked about")


def _named_for(answer: TierAnswer) -> dict[str, frozenset[str]]:
    """Per producer, the batch ids `answer`'s links name as bought from it."""
    named: dict[str, set[str]] = {}
    for link in answer.links:
        for p in link.parents:
            named.setdefault(p.producer, set()).add(p.batch_id)
    return {k: frozenset(v) for k, v in named.items()}


def _check_relayed(answer: TierAnswer, where: str) -> None:
    """The levels directly below `answer` (and its missing tiers) must be producers it
    names among its parents, each level once (`check_answer` refuses cycles), and each
    level must answer for batches `answer` names as that producer's."""
    named = _named_for(answer)
    producers = set(named)
    seen: set[str] = set()
    for up in answer.upstream:
        name = up.member[:MAX_ID]
        if up.member not in producers:
            raise TraceError(f"{where}: relays a level of {name!r}, no producer of its batches")
        if up.member in seen:
            raise TraceError(f"{where}: relays a level of {name!r} twice")
        seen.add(up.member)
        asked = set(up.implicated) | set(up.seal.asked if up.seal is not None else ())
        if extra := asked - named[up.member]:
            raise TraceError(
                f"{where}: relays a level of {name!r} about batch {min(extra)[:MAX_ID]!r}, "
                f"not one it names as {name!r}'s"
            )
    for m in answer.missing:
        if m.member not in producers:
            raise TraceError(f"{where}: names {m.member[:MAX_ID]!r} missing, no producer of it")


def check_answer(
    answer: TierAnswer,
    depth: int = 0,
    *,
    member: str | None = None,
    path: tuple[str, ...] = (),
    asked: frozenset[str] | None = None,
    reserve: AnswerSize = AnswerSize(),
) -> None:
    """Raise `TraceError` unless `answer` is within every bound, alone and as a whole,
    and every level below the top is a producer of the level above it (see the module
    docstring); `member`, when given, is who must have answered at the top (a producer
    cannot answer as another), `path` the members above it (the asker last), `asked` the
    batch ids it was asked about, `depth` the tiers above it that the answer will be
    relayed through and `reserve` what they add to it (their own levels)."""
    if member is not None and answer.member != member:
        raise TraceError(
            f"answer of {answer.member[:MAX_ID]!r}: answered by "
            f"{answer.member[:MAX_ID]!r}, asked {member!r}"
        )
    total = AnswerSize()
    todo = [(depth, answer, path)]
    while todo:  # top-down: a bomb stops at the first level beyond a total
        level, tier, above = todo.pop()
        where = f"answer of {tier.member[:MAX_ID]!r}"
        if level > MAX_DEPTH:
            raise TraceError(f"{where}: nested deeper than {MAX_DEPTH} tiers")
        _check_level(tier, where)
        total += _size(tier)
        check_size(total, where, reserve)
        if tier.member in above:
            raise TraceError(f"{where}: already on the trace's path above it (a cycle)")
        _check_own(tier, asked if tier is answer else None, where)
        _check_relayed(tier, where)
        todo += [(level + 1, up, (*above, tier.member)) for up in reversed(tier.upstream)]


def _personal(key: str) -> tuple[str, str] | None:
    factor, sep, category = key.partition("=")
    return (factor, category) if sep and factor in PERSONAL_FACTORS else None


def _pseudonymize(f: Finding, pseudonyms: Pseudonymizer) -> Finding:
    personal = _personal(f.key)
    key = f"{personal[0]}={pseudonyms.pseudonym(personal[1])}" if personal else f.key
    evidence: list[str] = []
    for e in f.evidence:
        table, sep, row = e.partition(":")
        hidden = sep and table in PERSONAL_EVIDENCE
        evidence.append(f"{table}:{pseudonyms.pseudonym(row)}" if hidden else e)
    return replace(f, key=key, evidence=tuple(evidence))


def pseudonymize_own(answer: TierAnswer, pseudonyms: Pseudonymizer) -> TierAnswer:
    """`answer` as it may go to a customer: the categories of `PERSONAL_FACTORS` (an
    operator id) and the row ids of `PERSONAL_EVIDENCE` in its own findings replaced by
    their pseudonyms under the customer's agreement (stable within it, so the customer
    still sees that two findings name the same operator). The levels below are the
    producers' and came pseudonymized under their own agreements."""
    return replace(answer, findings=tuple(_pseudonymize(f, pseudonyms) for f in answer.findings))
