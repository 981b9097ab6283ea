"""Proof documents offline: building from the queue, strict parsing, offline checks."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from ledger.client import SignedAnchor
from ledger.errors import NotAnchored, ProofFormatError, UnknownLeaf
from ledger.merkle import proof_length
from ledger.proofs import (
    InclusionProof,
    build_proof,
    document_type,
    offline_checks,
    verify_proof,
)
from ledger.queue import LeafQueue, ensure_schema

RECORDS = {f"insp-{i}": f'{{"verdict":"ok","n":{i}}}'.encode() for i in range(11)}


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> LeafQueue:
    """Read-only for the tests below, so one per module (hypothesis reuses it too)."""
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('proofs') / 'node.db'}")
    ensure_schema(engine)
    q = LeafQueue(engine)
    for ref, rec in RECORDS.items():
        q.enqueue("inspection", ref, rec)
    batch = q.seal("inspection", 100)
    assert batch is not None
    signed = q.mark_signed(
        batch, SignedAnchor(b"raw", b"\x11" * 32, 0, "0x" + "ab" * 20), 5, "0x" + "cd" * 20
    )
    q.mark_anchored(signed, b"\x11" * 32, 9, b"\x22" * 32, 5, "0x" + "cd" * 20)
    q.enqueue("agreement", "agr-1", b"pending")
    return q


def test_every_leaf_of_a_batch_gets_a_proof_that_checks_offline(queue: LeafQueue) -> None:
    roots = set()
    for ref, rec in RECORDS.items():
        proof = build_proof(queue, "inspection", ref, rec)
        assert all(c.ok for c in offline_checks(proof)), ref
        assert InclusionProof.parse(proof.to_json()) == proof
        roots.add(proof.tree.root)
    assert len(roots) == 1
    assert proof.tree.size == 11
    assert len(proof.tree.path) == proof_length(11, proof.tree.index)
    no_chain = verify_proof(proof, None)
    assert not no_chain.valid and "no chain access" in no_chain.reason


def test_missing_or_unanchored_leaves_say_so(queue: LeafQueue) -> None:
    with pytest.raises(UnknownLeaf, match="no inspection with id 'insp-99'"):
        build_proof(queue, "inspection", "insp-99")
    with pytest.raises(NotAnchored, match="agreement 'agr-1' is queued but not yet in a batch"):
        build_proof(queue, "agreement", "agr-1")
    with pytest.raises(ProofFormatError, match="not the one anchored"):
        build_proof(queue, "inspection", "insp-1", b"another record")


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_any_changed_byte_fails_offline_or_parsing(queue: LeafQueue, data: st.DataObject) -> None:
    ref = data.draw(st.sampled_from(sorted(RECORDS)), label="ref")
    doc = build_proof(queue, "inspection", ref, RECORDS[ref]).model_dump(mode="json")
    # change one byte of the record, one character of the path/root/leaf, or the index
    target = data.draw(
        st.sampled_from(
            ["record", "path", "root", "leaf_hash", "record_sha256", "index", "ref_id", "kind"]
        ),
        label="target",
    )
    if target == "record":
        raw = bytearray(base64.b64decode(doc["leaf"]["record_b64"]))
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        doc["leaf"]["record_b64"] = base64.b64encode(bytes(raw)).decode()
    elif target == "index":
        doc["tree"]["index"] = (doc["tree"]["index"] + data.draw(st.integers(1, 10))) % 11
    elif target == "kind":
        doc["leaf"]["kind"] = "agreement"
    elif target == "ref_id":
        doc["leaf"]["ref_id"] += "x"
    else:
        holder = doc["tree"] if target in ("path", "root") else doc["leaf"]
        if target == "path":
            i = data.draw(st.integers(0, len(holder["path"]) - 1), label="i")
            holder, target = holder["path"], i  # type: ignore[assignment]
        value = holder[target]  # type: ignore[index]
        pos = data.draw(st.integers(2, len(value) - 1), label="char")
        new = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != value[pos]))
        holder[target] = value[:pos] + new + value[pos + 1 :]  # type: ignore[index]
    proof = InclusionProof.parse(json.dumps(doc))
    assert not all(c.ok for c in offline_checks(proof))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["tree"].__setitem__("root", d["tree"]["root"].upper()), "tree.root"),
        (lambda d: d["tree"].__setitem__("size", "11"), "tree.size"),
        (lambda d: d["anchor"].__setitem__("contract", "0x12"), "anchor.contract"),
        (lambda d: d["leaf"].__setitem__("kind", "invoice"), "leaf.kind"),
        (lambda d: d.__setitem__("extra", 1), "extra"),
        (lambda d: d.__setitem__("version", 2), "version"),
        (lambda d: d["leaf"].__setitem__("record_b64", "QR=="), "leaf.record_b64"),
        (lambda d: d["tree"].pop("path"), "tree.path"),
    ],
)
def test_malformed_documents_name_the_field(queue: LeafQueue, mutate: object, field: str) -> None:
    doc = build_proof(queue, "inspection", "insp-3", RECORDS["insp-3"]).model_dump(mode="json")
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ProofFormatError, match=f"malformed proof: {field}"):
        InclusionProof.parse(json.dumps(doc))
    with pytest.raises(ProofFormatError, match="not JSON"):
        document_type(b"{nope")


def test_confirmation_cache_keeps_only_fresh_passing_checks() -> None:
    from ledger.proofs import Check, ConfirmationCache

    cache = ConfirmationCache(ttl_s=60, max_entries=2)
    ok, bad = [Check("anchored", True, "yes")], [Check("anchored", False, "no")]
    cache.put(("a",), ok)
    cache.put(("b",), bad)
    assert cache.get(("a",)) == ok and cache.get(("b",)) is None
    cache.put(("c",), ok)
    cache.put(("d",), ok)
    assert cache.get(("a",)) is None  # evicted, oldest first
    assert ConfirmationCache(ttl_s=0.0).get(("c",)) is None
    stale = ConfirmationCache(ttl_s=-1.0)
    stale.put(("e",), ok)
    assert stale.get(("e",)) is None
