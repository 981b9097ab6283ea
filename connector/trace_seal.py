"""Each tier signs its own level of a trace answer; the OEM counts only verified levels.

Only the top of a producer's answer reaches the OEM from the member asked (mutual TLS);
every level below it is relayed by that producer, which could otherwise write a level
in another member's name (a rival with a strong finding, or a sibling the OEM asked
itself, merged under its name), or replay a member's real level from an old trace, and
shift the responsibility onto it. So every member signs its own level with its Ed25519
signing key (the key of its certificate and directory entry), over
``qdspace.v1/trace-level\\0`` and the canonical JSON (`level_bytes`) of: the trace's id
and nonce (the OEM's, fresh per trace and carried down unchanged in each question),
its own member id, the member id that asked it, the batch ids it was asked about and its
own content (implicated batches, links, findings, missing tiers: not the levels in its
``upstream``, which their own members signed).

The OEM verifies each level below its own against the key it knows for that member
(`verified`): a level is kept only if it is signed, under that member's id and key, for
this trace's id and nonce, and asked by the member above it (the OEM itself for its
producers' answers). A level that fails is dropped, with everything relayed under it,
and becomes a `MissingTier` that says why: dropped, not shown as "unverified", because a
level nobody can be held to is nobody's word, and a report (anchored, read by people
deciding who pays) should carry no finding that cannot be traced to the member that
made it; the missing tier keeps its batch ids, so the report is partial and says what it
could not see, and whose level was refused. Pure: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import Finding
from qdspace.connector.trace import MAX_ID, LevelSeal, MissingTier, TierAnswer

_LEVEL_CONTEXT = b"qdspace.v1/trace-level\x00"


@dataclass(frozen=True)
class TraceNonce:
    """What binds a level to one trace: its id and the OEM's fresh nonce."""

    trace_id: str
    nonce: str


def _batch(b: BatchInfo) -> list[Any]:
    return [b.batch_id, b.material, b.kind, b.producer, b.quantity]


def _finding(f: Finding) -> dict[str, Any]:
    c = f.confidence
    return {
        "key": f.key,
        "kind": f.kind,
        "n": [f.implicated_n, f.comparable_n],
        "effect": f.effect,
        "excess": f.excess_out_of_control,
        "level": f.level_out_of_control,
        "p": [f.p_value, f.adjusted_p],
        "centers": [f.implicated_center, f.comparable_center],
        "windows": [
            [w.start.isoformat(), w.end.isoformat(), w.readings, list(w.batches), w.peak_sigma]
            for w in f.windows
        ],
        "evidence": list(f.evidence),
        "confidence": [c.completeness, c.anchored, c.calibrated],
        "note": f.note,
    }


def level_bytes(
    level: TierAnswer, trace: TraceNonce, member_id: str, asked_by: str, asked: tuple[str, ...]
) -> bytes:
    """What a member signs for its `level` (see the module docstring): canonical JSON of
    everything the wire carries of it, the levels it relays left out."""
    doc = {
        "trace": [trace.trace_id, trace.nonce],
        "member": [level.member, member_id],
        "asked_by": asked_by,
        "asked": list(asked),
        "implicated": list(level.implicated),
        "comparable_n": level.comparable_n,
        "links": [[_batch(x.batch), [_batch(p) for p in x.parents]] for x in level.links],
        "findings": [_finding(f) for f in level.findings],
        "missing": [[m.member, list(m.batch_ids), m.reason] for m in level.missing],
        "elapsed_ms": level.elapsed_ms,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return _LEVEL_CONTEXT + data.encode()


def seal_level(
    level: TierAnswer,
    key: SigningKey,
    trace: TraceNonce,
    member_id: str,
    asked_by: str,
    asked: tuple[str, ...],
) -> TierAnswer:
    """`level` with its member's seal, for the question `asked_by` asked about `asked`."""
    asked = tuple(sorted(set(asked)))
    signature = key.sign(level_bytes(level, trace, member_id, asked_by, asked)).signature
    return replace(level, seal=LevelSeal(member_id, asked_by, asked, signature))


#: a member's name -> its member id and Ed25519 verify key, as the OEM knows them
MemberKeys = Mapping[str, tuple[str, bytes]]


def unverified(level: TierAnswer, asked_by: str, trace: TraceNonce, keys: MemberKeys) -> str | None:
    """Why `level`, asked by member id `asked_by`, is not its member's word in this trace
    (None: it is)."""
    seal = level.seal
    if seal is None:
        return "not signed"
    if seal.asked_by != asked_by:
        return f"signed as asked by {seal.asked_by[:80]!r}, not by {asked_by[:80]!r}"
    known = keys.get(level.member)
    if known is None:
        return f"no verify key known for {level.member[:MAX_ID]!r}"
    member_id, raw_key = known
    if seal.member_id != member_id:
        return f"signed as {seal.member_id[:80]!r}, the member is {member_id!r}"
    try:
        data = level_bytes(level, trace, seal.member_id, seal.asked_by, seal.asked)
        VerifyKey(raw_key).verify(data, seal.signature)
    except (BadSignatureError, ValueError):
        return "its signature does not verify (another trace, question or content)"
    return None


def verified(root: TierAnswer, root_id: str, trace: TraceNonce, keys: MemberKeys) -> TierAnswer:
    """`root` (the OEM's own level, member id `root_id`) with every level below it that is
    not verified (`unverified`) dropped, with what it relays, as a `MissingTier` of the
    level above it that says why."""
    kept: list[TierAnswer] = []
    dropped: list[MissingTier] = []
    for up in root.upstream:
        why = unverified(up, root_id, trace, keys)
        if why is None and up.seal is not None:
            kept.append(verified(up, up.seal.member_id, trace, keys))
            continue
        name = up.member[:MAX_ID]
        whose = f"the answer of {name!r}" if not root.seal else f"a level of {name!r} relayed"
        ids = up.seal.asked if up.seal is not None else up.implicated
        dropped.append(MissingTier(up.member, ids, f"{whose} is not verified: {why}"[:300]))
    return replace(root, upstream=tuple(kept), missing=(*root.missing, *dropped))
