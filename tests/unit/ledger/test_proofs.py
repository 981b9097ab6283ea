"""Proof documents offline: building from the queue, strict parsing, offline checks."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from qdspace.ledger.errors import NotAnchored, ProofFormatError, UnknownLeaf
from qdspace.ledger.merkle import proof_length
from qdspace.ledger.proofs import (
    InclusionProof,
    build_proof,
    offline_checks,
    verify_proof,
)
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.ledger.tx import SignedAnchor
from qdspace.ledger.verify import document_type

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
        assert InclusionProof.parse(proof.to_bytes()) == proof
        assert proof.leaf_hash() == queue.leaf("inspection", ref).leaf_hash
        roots.add(proof.root)
    assert len(roots) == 1
    assert proof.size == 11
    assert len(proof.path_hashes()) == proof_length(11, proof.index)
    no_chain = verify_proof(proof, None)
    assert not no_chain.valid and "no chain access" in no_chain.reason
    bare = proof.with_record(None)
    assert [c.name for c in offline_checks(bare)] == ["inclusion"]
    assert len(bare.to_bytes()) < len(proof.to_bytes()) < len(proof.to_json())


def test_proof_at_one_million_leaves_fits_in_one_kilobyte() -> None:
    """The issue's aim: <= 1 KB at 1M leaves. A 20-hash path, and every field kept."""
    size, index = 1_000_000, 524_287  # an index with the longest path
    path = [bytes([i]) * 32 for i in range(proof_length(size, index))]
    proof = InclusionProof(
        kind="inspection",
        ref_id="EL-000000042",
        record_sha256="0x" + "ab" * 32,
        index=index,
        size=size,
        path=base64.b64encode(b"".join(path)).decode(),
        root="0x" + "cd" * 32,
        chain_id=131277322940537,
        contract="0x" + "12" * 20,
        tx_hash="0x" + "ef" * 32,
        block_number=123_456,
    )
    assert len(path) == 20
    assert len(proof.to_bytes()) <= 1024
    assert InclusionProof.parse(proof.to_bytes()) == proof
    assert len(proof.to_json()) <= 1400  # the JSON spelling: hex hashes, base64 path


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
    # change one byte of the record, the path, the root, the record hash, the index or the id
    target = data.draw(
        st.sampled_from(["record", "path", "root", "record_sha256", "index", "ref_id", "kind"]),
        label="target",
    )
    if target in ("record", "path"):
        key = "record_b64" if target == "record" else "path"
        raw = bytearray(base64.b64decode(doc[key]))
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        doc[key] = base64.b64encode(bytes(raw)).decode()
    elif target == "index":
        doc["index"] = (doc["index"] + data.draw(st.integers(1, 10))) % 11
    elif target == "kind":
        doc["kind"] = "agreement"
    elif target == "ref_id":
        doc["ref_id"] += "x"
    else:
        value = doc[target]
        pos = data.draw(st.integers(2, len(value) - 1), label="char")
        new = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != value[pos]))
        doc[target] = value[:pos] + new + value[pos + 1 :]
    proof = InclusionProof.parse(json.dumps(doc))
    assert not all(c.ok for c in offline_checks(proof))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.__setitem__("root", d["root"].upper()), "root"),
        (lambda d: d.__setitem__("size", "11"), "size"),
        (lambda d: d.__setitem__("contract", "0x12"), "contract"),
        (lambda d: d.__setitem__("kind", "invoice"), "kind"),
        (lambda d: d.__setitem__("extra", 1), "extra"),
        (lambda d: d.__setitem__("version", 1), "version"),
        (lambda d: d.__setitem__("record_b64", "QR=="), "record_b64"),
        (lambda d: d.__setitem__("path", d["path"][:-4]), "path"),
        (lambda d: d.__setitem__("path", base64.b64encode(b"x" * 31).decode()), "path"),
        (lambda d: d.pop("path"), "path"),
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
    from qdspace.ledger.proofs import Check, ConfirmationCache

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
