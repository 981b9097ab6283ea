"""``qdspace.v1.Trace`` messages <-> trace domain objects, in one place.

Decoding an answer is where a producer's bytes become ours. A reply may be tens of
megabytes of tiny repeated fields (millions of empty links): building an object for each
before counting them would hold the event loop for minutes and take gigabytes. So
`answer_from_proto` first counts on the message itself (`_check_counts`: the repeated
fields' lengths, level by level and all levels together, against the same limits
`connector.trace.check_answer` uses), builds objects only for a reply within them, then
has `check_answer` bound the rest (texts, numbers, who relays whom, what was asked).
Times must parse. A question's path entries, trace id and nonce are ids like its batch
ids, checked as such: a peer's 200 KB of control characters are not passed on down.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import DecodeError

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DataConfidence, Finding, RootCauseError, Window
from qdspace.connector.trace import (
    MAX_BATCHES,
    MAX_DEPTH,
    MAX_EVIDENCE,
    MAX_FINDINGS,
    MAX_LINKS,
    MAX_MISSING,
    MAX_PARENTS,
    MAX_PATH,
    MAX_UPSTREAM,
    MAX_WINDOWS,
    AnswerSize,
    BatchLink,
    LevelSeal,
    MissingTier,
    TierAnswer,
    TraceError,
    check_answer,
    check_id,
    check_size,
    level_size,
)
from qdspace.node.runtime.trace_producer import TraceQuestion
from qdspace.protocols.v1 import trace_pb2


def question_to_proto(q: TraceQuestion) -> trace_pb2.InvestigateRequest:
    return trace_pb2.InvestigateRequest(
        agreement_id=q.agreement_id,
        batch_ids=q.batch_ids,
        path=list(q.path),
        depth=q.depth,
        trace_id=q.trace_id,
        nonce=q.nonce,
    )


def question_from_proto(message: trace_pb2.InvestigateRequest) -> TraceQuestion:
    if len(message.path) > MAX_PATH or message.depth > MAX_DEPTH:
        raise TraceError(f"a trace goes at most {MAX_DEPTH} tiers deep")
    if len(message.agreement_id) > 128:
        raise TraceError("agreement id: at most 128 characters")
    for i, member in enumerate(message.path):
        check_id(member, f"path entry {i}")
    for value, what in ((message.trace_id, "trace id"), (message.nonce, "trace nonce")):
        if value:  # a question without them gets a level no OEM's trace verifies
            check_id(value, what)
    return TraceQuestion(
        message.agreement_id,
        list(message.batch_ids),
        tuple(message.path),
        message.depth,
        message.trace_id,
        message.nonce,
    )


def _batch(b: BatchInfo) -> trace_pb2.BatchRef:
    return trace_pb2.BatchRef(
        batch_id=b.batch_id,
        material=b.material,
        kind=b.kind,
        producer=b.producer,
        quantity=b.quantity,
    )


def _batch_from(m: trace_pb2.BatchRef) -> BatchInfo:
    return BatchInfo(m.batch_id, m.material, m.kind, m.producer, m.quantity)


def _finding(f: Finding) -> trace_pb2.Finding:
    c = f.confidence
    out = trace_pb2.Finding(
        key=f.key,
        kind=f.kind,
        implicated_n=f.implicated_n,
        comparable_n=f.comparable_n,
        effect=f.effect,
        excess_out_of_control=f.excess_out_of_control,
        level_out_of_control=f.level_out_of_control,
        p_value=f.p_value,
        adjusted_p=f.adjusted_p,
        windows=[
            trace_pb2.Window(
                start=w.start.isoformat(),
                end=w.end.isoformat(),
                readings=w.readings,
                batches=list(w.batches),
                peak_sigma=w.peak_sigma,
            )
            for w in f.windows
        ],
        evidence=list(f.evidence),
        confidence=trace_pb2.Confidence(completeness=c.completeness, anchored=c.anchored),
        note=f.note,
    )
    if c.calibrated is not None:
        out.confidence.calibrated = c.calibrated
    if f.implicated_center is not None:
        out.implicated_center = f.implicated_center
    if f.comparable_center is not None:
        out.comparable_center = f.comparable_center
    return out


def _time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text[:40])
    except ValueError:
        raise TraceError(f"window time {text[:40]!r} is not ISO 8601") from None
    if at.tzinfo is None:
        raise TraceError(f"window time {text[:40]!r} has no time zone")
    return at


def _finding_from(m: trace_pb2.Finding) -> Finding:
    c = m.confidence
    try:
        confidence = DataConfidence(
            c.completeness, c.anchored, c.calibrated if c.HasField("calibrated") else None
        )
    except RootCauseError as exc:
        raise TraceError(f"finding {m.key[:64]!r}: {exc}") from None
    return Finding(
        key=m.key,
        kind=m.kind,
        implicated_n=m.implicated_n,
        comparable_n=m.comparable_n,
        effect=m.effect,
        excess_out_of_control=m.excess_out_of_control,
        p_value=m.p_value,
        level_out_of_control=m.level_out_of_control,
        adjusted_p=m.adjusted_p,
        implicated_center=m.implicated_center if m.HasField("implicated_center") else None,
        comparable_center=m.comparable_center if m.HasField("comparable_center") else None,
        windows=tuple(
            Window(_time(w.start), _time(w.end), w.readings, tuple(w.batches), w.peak_sigma)
            for w in m.windows
        ),
        evidence=tuple(m.evidence),
        confidence=confidence,
        note=m.note,
    )


def answer_to_proto(a: TierAnswer) -> trace_pb2.TierAnswer:
    seal = a.seal or LevelSeal("", "", (), b"")
    return trace_pb2.TierAnswer(
        member_id=seal.member_id,
        asked_by=seal.asked_by,
        asked=list(seal.asked),
        signature=seal.signature,
        member=a.member,
        implicated=list(a.implicated),
        comparable_n=a.comparable_n,
        links=[
            trace_pb2.BatchLink(batch=_batch(link.batch), parents=[_batch(p) for p in link.parents])
            for link in a.links
        ],
        findings=[_finding(f) for f in a.findings],
        upstream=[answer_to_proto(u) for u in a.upstream],
        missing=[
            trace_pb2.MissingTier(member=m.member, batch_ids=list(m.batch_ids), reason=m.reason)
            for m in a.missing
        ],
        elapsed_ms=a.elapsed_ms,
    )


def _level_counts(m: trace_pb2.TierAnswer, where: str) -> AnswerSize:
    """One level's counts, each repeated field's length checked before it is walked."""
    if len(m.implicated) > MAX_BATCHES or len(m.links) > MAX_LINKS:
        raise TraceError(f"{where}: too many batches")
    if len(m.findings) > MAX_FINDINGS or len(m.upstream) > MAX_UPSTREAM:
        raise TraceError(f"{where}: too many findings or upstream answers")
    if len(m.missing) > MAX_MISSING or len(m.asked) > MAX_BATCHES:
        raise TraceError(f"{where}: malformed")
    parents = 0
    for link in m.links:
        if len(link.parents) > MAX_PARENTS:
            raise TraceError(f"{where}: a batch has too many parents")
        parents += len(link.parents)
    ids = 0
    for f in m.findings:
        if len(f.evidence) > MAX_EVIDENCE or len(f.windows) > MAX_WINDOWS:
            raise TraceError(f"{where}: too much evidence")
        ids += len(f.evidence) + sum(len(w.batches) for w in f.windows)
    missing = sum(len(x.batch_ids) for x in m.missing)
    return level_size(len(m.implicated), len(m.links), parents, ids + len(m.asked), missing)


def _check_counts(m: trace_pb2.TierAnswer, depth: int, reserve: AnswerSize) -> None:
    """`TraceError` unless every level of `m` and all of them together are within the
    counts `check_answer` allows: read before a single domain object is built."""
    total = AnswerSize()
    todo = [(depth, m)]
    while todo:
        level_depth, level = todo.pop()
        where = f"answer of {level.member[:64]!r}"
        if level_depth > MAX_DEPTH:
            raise TraceError(f"{where}: nested deeper than {MAX_DEPTH} tiers")
        total += _level_counts(level, where)
        check_size(total, where, reserve)
        todo += [(level_depth + 1, up) for up in level.upstream]


def _answer_from(m: trace_pb2.TierAnswer, depth: int) -> TierAnswer:
    if depth > MAX_DEPTH:
        raise TraceError(f"answer nested deeper than {MAX_DEPTH} tiers")
    return TierAnswer(
        member=m.member,
        implicated=tuple(m.implicated),
        comparable_n=m.comparable_n,
        links=tuple(
            BatchLink(_batch_from(link.batch), tuple(_batch_from(p) for p in link.parents))
            for link in m.links
        ),
        findings=tuple(_finding_from(f) for f in m.findings),
        upstream=tuple(_answer_from(u, depth + 1) for u in m.upstream),
        missing=tuple(MissingTier(x.member, tuple(x.batch_ids), x.reason) for x in m.missing),
        elapsed_ms=m.elapsed_ms,
        seal=_seal_from(m),
    )


def _seal_from(m: trace_pb2.TierAnswer) -> LevelSeal | None:
    """A level's seal; None for a level that carries none (counted as unverified)."""
    if not (m.signature or m.member_id or m.asked_by or m.asked):
        return None
    return LevelSeal(m.member_id, m.asked_by, tuple(m.asked), m.signature)


def answer_from_proto(
    m: trace_pb2.TierAnswer,
    member: str,
    path: tuple[str, ...] = (),
    *,
    depth: int = 0,
    asked: frozenset[str] | None = None,
    reserve: AnswerSize = AnswerSize(),
) -> TierAnswer:
    """A producer's answer, counted, decoded and checked (`TraceError` names what is
    wrong); `member` is who was asked, `path` the members above it (the asker last) and
    `depth`, `asked` and `reserve` as `check_answer` takes them."""
    _check_counts(m, depth, reserve)
    answer = _answer_from(m, depth)
    check_answer(answer, depth, member=member, path=path, asked=asked, reserve=reserve)
    return answer


def reply_from_bytes(
    data: bytes,
    member: str,
    path: tuple[str, ...] = (),
    *,
    depth: int = 0,
    asked: frozenset[str] | None = None,
    reserve: AnswerSize = AnswerSize(),
) -> TierAnswer:
    """An ``InvestigateReply`` as it came off the wire, parsed, counted, decoded and checked
    (slow for a large reply: the caller runs it in a worker thread)."""
    reply = trace_pb2.InvestigateReply()
    try:
        reply.ParseFromString(data)
    except DecodeError:
        raise TraceError(f"{member}: the answer is not a trace reply") from None
    return answer_from_proto(reply.answer, member, path, depth=depth, asked=asked, reserve=reserve)
