"""Masked inputs summed straight from the received chunks (``chunks.Pieces``,
``MaskedPieces``, ``secagg_masks.add_pieces``): the sum equals summing whole vectors for
any cut of the bytes (chunks ending inside an element, unaligned data), and an input
refused for any reason leaves the round's sum exactly as if it had never been sent."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.federation.chunks import Chunk, Pieces, chunks
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.params import Vector
from qdspace.federation.secagg_masks import add_pieces
from qdspace.federation.secagg_messages import MaskedInput, MaskedPieces

from .test_fl_secagg import QUANT, config, confirm_all, keys_shared

LENGTH = 10_007


def _cut(data: bytes, cuts: list[int], prefix: int) -> tuple[memoryview, ...]:
    """``data`` cut at ``cuts``, each piece the tail of a fresh ``bytes`` with ``prefix``
    bytes before it (as a received message's data lies after its framing)."""
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return tuple(
        memoryview(bytes(prefix) + data[lo:hi])[prefix:] for lo, hi in itertools.pairwise(edges)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300),
    st.lists(st.integers(0, 1200), max_size=12),
    st.integers(0, 7),
    st.integers(0, 2**32 - 1),
)
def test_adding_pieces_equals_adding_the_whole_vector_for_any_cut(
    n: int, cuts: list[int], prefix: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vector = rng.integers(0, 2**32, n, dtype=np.uint32)
    start = rng.integers(0, 2**32, n, dtype=np.uint32)
    pieces = _cut(vector.astype("<u4").tobytes(), cuts, prefix)
    total = start.copy()
    add_pieces(total, pieces, start=False)
    assert np.array_equal(total, start + vector)  # in Z_2^32: wraps like the ring
    fresh = np.empty(n, dtype="<u4")
    add_pieces(fresh, pieces, start=True)
    assert np.array_equal(fresh, vector)


def test_pieces_keep_the_received_data_uncopied_and_refuse_what_an_assembler_refuses() -> None:
    payload = os.urandom(1000)
    digest = hashlib.sha256(payload).digest()
    received = [bytes(c.data) for c in chunks(payload, 300)]
    stream = Pieces(1000, digest, limit=10**6, min_chunk=1, what="masked input of cellex")
    for raw in received:
        stream.add(Chunk(stream.received, 1000, memoryview(raw)))
    pieces = stream.finish()
    assert b"".join(pieces) == payload
    assert [p.obj for p in pieces] == received  # views of the received messages: no copy

    def refused(action: object) -> str:
        with pytest.raises(UpdateRefused) as exc:
            action()  # type: ignore[operator]
        assert exc.value.reason is RefusalReason.WRONG_SHAPE
        return str(exc.value)

    assert "limit" in refused(lambda: Pieces(10**9, digest, limit=10**6, what="masked"))
    past = Pieces(1000, b"", limit=10**6, min_chunk=1, what="masked")
    past.add(Chunk(0, 1000, payload[:300]))
    assert "run past" in refused(lambda: past.add(Chunk(300, 1000, b"x" * 701)))
    assert "ended after 300" in refused(past.finish)
    many = Pieces(1000, b"", limit=10**6, min_chunk=500, what="masked")
    many.add(Chunk(0, 1000, payload[:1]))
    many.add(Chunk(1, 1000, payload[1:2]))
    assert "more than 2 chunks" in refused(lambda: many.add(Chunk(2, 1000, payload[2:3])))
    corrupt = Pieces(1000, digest, limit=10**6, min_chunk=1, what="masked")
    for c in chunks(payload[:-1] + b"\x00", 300):
        corrupt.add(c)
    assert "SHA-256" in refused(corrupt.finish)


#: How a member's masked input is sent: made from the member's real one.
Send = Callable[[MaskedInput], MaskedInput | MaskedPieces]


def _bytes_of(masked: MaskedInput) -> bytes:
    return masked.vector.astype("<u4").tobytes()


def as_pieces(masked: MaskedInput) -> MaskedPieces:
    """The real input cut at odd byte counts, each piece unaligned after 5 bytes of framing."""
    return MaskedPieces(masked.member, _cut(_bytes_of(masked), [1, 4097, 20_001], 5))


def one_byte_short(masked: MaskedInput) -> MaskedPieces:
    return MaskedPieces(masked.member, (memoryview(_bytes_of(masked))[:-1],))


def one_byte_long(masked: MaskedInput) -> MaskedPieces:
    return MaskedPieces(masked.member, (_bytes_of(masked), b"\x01"))


def _secure_round(
    vectors: dict[str, Vector], send: dict[str, list[Send]]
) -> tuple[Vector, dict[str, list[str]]]:
    """One secure round; each member's masked input goes in as each of ``send[m]`` makes
    it from the member's real one (in that order); the result and each member's refusals."""
    server, clients = keys_shared(vectors, config(2, LENGTH))
    refusals: dict[str, list[str]] = {}
    for m, c in clients.items():
        masked = c.mask(vectors[m], server.inbox(m))
        for make in send.get(m, [lambda x: x]):
            try:
                server.receive_masked(make(masked))
            except UpdateRefused as exc:
                refusals.setdefault(m, []).append(exc.reason.value)
    server.close_masked()
    request = confirm_all(server, clients)
    for m in request.survivors:
        server.receive_unmask(clients[m].unmask(request))
    return server.finish().total.copy(), refusals


def test_inputs_summed_from_pieces_give_the_same_round_as_whole_vectors() -> None:
    rng = np.random.default_rng(5)
    vectors = {f"m{i}": rng.uniform(-0.3, 0.3, LENGTH).astype(np.float32) for i in range(3)}
    whole, _ = _secure_round(vectors, {})
    pieces, refusals = _secure_round(vectors, {m: [as_pieces] for m in vectors})
    assert refusals == {}
    assert np.array_equal(pieces, whole)
    quantised = np.zeros(LENGTH, np.uint32)
    for v in vectors.values():
        quantised += QUANT.encode(v)
    assert np.array_equal(whole, QUANT.decode(quantised))


def test_refused_inputs_leave_the_sum_as_if_they_had_never_been_sent() -> None:
    """Before its real input, m1 sends its own masked input one byte short and one byte
    long, and m2 sends its real input three times; every bad one is refused and the
    round's result is bit for bit the round without them."""
    rng = np.random.default_rng(9)
    vectors = {f"m{i}": rng.uniform(-0.3, 0.3, LENGTH).astype(np.float32) for i in range(3)}
    honest, _ = _secure_round(vectors, {})
    hostile, refusals = _secure_round(
        vectors,
        {"m1": [one_byte_short, one_byte_long, as_pieces], "m2": [as_pieces] * 3},
    )
    assert refusals == {"m1": ["wrong_shape", "wrong_shape"], "m2": ["duplicate", "duplicate"]}
    assert np.array_equal(hostile, honest)
