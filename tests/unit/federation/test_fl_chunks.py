"""Chunked payloads: in-order reassembly, size limits and digest checks."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.federation.chunks import (
    HASH_PIECE,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    Assembler,
    Chunk,
    check_chunk_bytes,
    chunks,
    max_chunks,
)
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.params import encode_vector, encode_vector_chunks
from qdspace.node.rpc.federation_serde import data_chunk_prefix, decode_model_chunk


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 700))
def test_chunks_reassemble_to_the_payload(payload: bytes, size: int) -> None:
    asm = Assembler(
        len(payload), hashlib.sha256(payload).digest(), limit=10_000, min_chunk=1, what="model"
    )
    parts = list(chunks(payload, size))
    assert all(len(c.data) <= size for c in parts)
    for c in parts:
        asm.add(c)
    assert bytes(asm.finish()) == payload


def test_out_of_order_oversize_truncated_and_corrupt_streams_are_refused() -> None:
    payload = os.urandom(1000)
    digest = hashlib.sha256(payload).digest()
    parts = list(chunks(payload, 300))

    def refused(action: object) -> str:
        with pytest.raises(UpdateRefused) as exc:
            action()  # type: ignore[operator]
        assert exc.value.reason is RefusalReason.WRONG_SHAPE
        return str(exc.value)

    assert "limit" in refused(lambda: Assembler(10**9, digest, limit=10**6, what="update"))
    asm = Assembler(1000, digest, limit=10**6, min_chunk=1, what="update")
    assert "expected offset 0" in refused(lambda: asm.add(parts[1]))
    asm.add(parts[0])
    assert "run past" in refused(lambda: asm.add(Chunk(300, 1000, b"x" * 800)))
    assert "ended after 300" in refused(asm.finish)
    bad = Assembler(1000, digest, limit=10**6, min_chunk=1, what="update")
    for c in chunks(payload[:-1] + b"\x00", 300):
        bad.add(c)
    assert "SHA-256" in refused(bad.finish)


def test_without_a_digest_only_the_size_is_checked_and_the_digest_is_still_available() -> None:
    payload = os.urandom(1000)
    asm = Assembler(1000, b"", limit=10**6, min_chunk=1, what="masked input", hash_always=True)
    for c in chunks(payload, 333):
        asm.add(c)
    out = asm.finish()
    assert bytes(out) == payload and asm.digest == hashlib.sha256(payload).digest()
    out[0] ^= 1  # the caller owns a writable buffer
    short = Assembler(1000, b"", limit=10**6, min_chunk=1, what="masked input")
    short.add(Chunk(0, 1000, payload[:10]))
    with pytest.raises(UpdateRefused, match="ended after 10"):
        short.finish()
    with pytest.raises(UpdateRefused, match="32"):
        Assembler(10, b"short", limit=100, what="update")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3 * HASH_PIECE + 17), st.integers(1, 2 * HASH_PIECE + 3))
def test_piecewise_hashing_matches_the_digest_across_piece_and_chunk_edges(
    total: int, size: int
) -> None:
    payload = os.urandom(total)
    asm = Assembler(total, hashlib.sha256(payload).digest(), limit=total, min_chunk=1, what="model")
    for c in chunks(payload, size):
        asm.add(c)
    assert bytes(asm.finish()) == payload
    assert asm.digest == hashlib.sha256(payload).digest()


def test_a_corrupt_byte_past_the_first_piece_is_caught() -> None:
    payload = os.urandom(HASH_PIECE + 1000)
    digest = hashlib.sha256(payload).digest()
    bad = Assembler(len(payload), digest, limit=len(payload), what="version 3 from sunarc")
    tampered = bytearray(payload)
    tampered[HASH_PIECE + 500] ^= 1
    for c in chunks(bytes(tampered), 4 * HASH_PIECE):
        bad.add(c)
    with pytest.raises(UpdateRefused, match="version 3 from sunarc: payload does not match"):
        bad.finish()


@pytest.mark.parametrize("chunk_bytes", [10, 1000, 65_536, 1_200_200, 2_000_000])
def test_a_version_encoded_into_its_download_messages_is_the_canonical_bytes(
    chunk_bytes: int,
) -> None:
    """Chunk edges inside the header, at its end, and past the payload: the messages'
    data, read as a receiver does, is ``encode_vector`` and hashes to its digest; the
    messages hold copies (the vector may change afterwards)."""
    shapes = ((300_001,), (7, 3))
    vector = np.random.default_rng(3).normal(0, 1, 300_022).astype(np.float32)
    canonical = bytes(encode_vector(vector, shapes))
    hasher = hashlib.sha256()
    messages, pieces = encode_vector_chunks(
        vector, shapes, chunk_bytes=chunk_bytes, prefix=data_chunk_prefix, hasher=hasher
    )
    assert hasher.digest() == hashlib.sha256(canonical).digest()
    assert len(messages) == -(-len(canonical) // chunk_bytes)
    received = [decode_model_chunk(m) for m in messages]
    assert all(header is None for header, _ in received)
    assert b"".join(bytes(data) for _, data in received) == canonical
    assert [bytes(p) for p in pieces] == [bytes(data) for _, data in received]
    vector[:] = 0
    assert b"".join(pieces) == canonical
    bare, _ = encode_vector_chunks(vector, shapes, chunk_bytes=chunk_bytes)
    assert b"".join(bare) == bytes(encode_vector(vector, shapes))


@pytest.mark.parametrize("size", [MIN_CHUNK_BYTES, 100_000, 1 << 20, MAX_CHUNK_BYTES])
def test_any_chunk_size_a_sender_may_pick_is_reassembled(size: int) -> None:
    """46.8 MB cut at any legal size (the secure bench job's update) fits the bound."""
    total = 46_800_000
    assert -(-total // size) <= max_chunks(total)
    payload = np.random.default_rng(1).integers(0, 256, 3 * MIN_CHUNK_BYTES + 17, np.uint8)
    asm = Assembler(payload.size, b"", limit=payload.size, what="masked input")
    for part in chunks(payload.data, min(size, payload.size)):
        asm.add(part)
    assert bytes(asm.finish()) == payload.tobytes()


def test_a_payload_cut_finer_than_the_minimum_is_refused_on_the_first_extra_chunk() -> None:
    payload = os.urandom(2 * MIN_CHUNK_BYTES + 1)  # at most 3 chunks
    assert max_chunks(len(payload)) == 3 and max_chunks(0) == 1
    asm = Assembler(len(payload), b"", limit=len(payload), what="update of cellex")
    parts = chunks(payload, 1)
    for _ in range(3):
        asm.add(next(parts))
    with pytest.raises(UpdateRefused) as exc:
        asm.add(next(parts))
    assert exc.value.reason is RefusalReason.WRONG_SHAPE
    assert str(exc.value) == (
        f"wrong_shape: update of cellex: more than 3 chunks for {len(payload)} bytes; "
        f"every chunk but the last must carry at least {MIN_CHUNK_BYTES} bytes"
    )
    # empty chunks count too: they cannot stretch a stream either
    empty = Assembler(10, b"", limit=10, what="update")
    empty.add(Chunk(0, 10, b""))
    with pytest.raises(UpdateRefused, match="more than 1 chunks"):
        empty.add(Chunk(0, 10, b""))


def test_a_chunk_over_the_maximum_is_refused() -> None:
    total = MAX_CHUNK_BYTES + 1
    asm = Assembler(total, b"", limit=total, what="version 2 from sunarc")
    with pytest.raises(UpdateRefused, match=f"chunks carry at most {MAX_CHUNK_BYTES} bytes"):
        asm.add(Chunk(0, total, bytes(total)))


def test_senders_may_only_pick_chunk_sizes_within_the_bounds() -> None:
    assert check_chunk_bytes(MIN_CHUNK_BYTES) == MIN_CHUNK_BYTES
    assert check_chunk_bytes(MAX_CHUNK_BYTES) == MAX_CHUNK_BYTES
    for bad in (0, 1, MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1):
        with pytest.raises(ValueError, match="chunk size must be between"):
            check_chunk_bytes(bad)
