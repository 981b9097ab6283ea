"""Streamed masking (a member masks chunk k+1 while chunk k is sent): the chunks joined are
the masked input, the secure aggregate of streamed inputs equals the plain sum, and the
coordinator's in-place decoding equals the allocating one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.federation.errors import SecAggError
from qdspace.federation.params import Vector
from qdspace.federation.secagg_masks import BLOCK, MaskStreams, Quantizer
from qdspace.federation.secagg_messages import MaskedInput

from .test_fl_secagg import QUANT, config, confirm_all, keys_shared, plain_sum

# longer than a few mask blocks and not a multiple of one: chunks end mid-block
LENGTH = 3 * BLOCK + 12_345


def _vectors(n: int, seed: int) -> dict[str, Vector]:
    rng = np.random.default_rng(seed)
    return {f"m{i}": rng.uniform(-0.3, 0.3, LENGTH).astype(np.float32) for i in range(n)}


def _streamed_round(
    vectors: dict[str, Vector], chunk: int, *, owned: bool = False, reuse: bool = False
) -> tuple[Vector, list[MaskedInput]]:
    """One secure round in which every member masks its input chunk by chunk; ``owned``:
    the server gets each input in a buffer of its own (as the node hands over uploads);
    ``reuse``: each chunk is made in one reused buffer (and copied out, as the upload does)."""
    server, clients = keys_shared(vectors, config(2, LENGTH))
    sent = []
    for m, c in clients.items():
        masking = c.masking(vectors[m], server.inbox(m))
        parts = [p.copy() for p in masking.blocks(chunk, reuse_buffer=reuse)]  # on the wire
        assert all(p.size <= chunk for p in parts) and sum(p.size for p in parts) == LENGTH
        joined = np.concatenate(parts)
        if reuse:
            with pytest.raises(SecAggError, match="reused buffer"):
                _ = masking.result
        else:
            assert np.array_equal(joined, masking.result.vector)
        sent.append(MaskedInput(m, joined.copy()))
        server.receive_masked(MaskedInput(m, joined, owned=owned))
    server.close_masked()
    request = confirm_all(server, clients)
    for m in request.survivors:
        server.receive_unmask(clients[m].unmask(request))
    return server.finish().total, sent


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("chunk", [BLOCK, 4 * BLOCK, BLOCK // 3 + 1, LENGTH + 1])
def test_streamed_secure_aggregate_equals_the_plain_sum(chunk: int, reuse: bool) -> None:
    vectors = _vectors(3, seed=chunk)
    total, sent = _streamed_round(vectors, chunk, reuse=reuse)
    # exactly the sum of the quantised inputs: every mask cancelled, nothing lost or doubled
    quantised = np.zeros(LENGTH, np.uint32)
    for v in vectors.values():
        quantised += QUANT.encode(v)
    assert np.array_equal(total, QUANT.decode(quantised))
    # which is the plain sum up to the quantisation error (and float32 rounding)
    expect = plain_sum(vectors, vectors)
    assert np.allclose(total, expect, rtol=2**-22, atol=QUANT.max_error(3))
    # and nothing that went on the wire is a member's quantised update in the clear
    for masked in sent:
        clear = QUANT.encode(vectors[masked.member])
        assert np.mean(masked.vector == clear) < 0.01


@pytest.mark.parametrize("owned", [False, True])
def test_summing_into_the_first_uploaded_buffer_gives_the_exact_sum(owned: bool) -> None:
    vectors = _vectors(3, seed=7)
    total, _ = _streamed_round(vectors, 4 * BLOCK, owned=owned)
    quantised = np.zeros(LENGTH, np.uint32)
    for v in vectors.values():
        quantised += QUANT.encode(v)
    assert np.array_equal(total, QUANT.decode(quantised))


@pytest.mark.parametrize("owned", [False, True])
def test_the_server_sums_into_an_input_only_when_it_owns_it(owned: bool) -> None:
    vectors = _vectors(3, seed=3)
    server, clients = keys_shared(vectors, config(2, LENGTH))
    first, second, _ = (c.mask(vectors[m], server.inbox(m)) for m, c in clients.items())
    sent = first.vector.copy()
    server.receive_masked(MaskedInput(first.member, first.vector, owned=owned))
    server.receive_masked(second)
    if owned:  # the first upload's buffer became the running sum: no 50 MB copy
        assert np.array_equal(first.vector, sent + second.vector)
    else:  # a buffer the caller still holds is never written
        assert np.array_equal(first.vector, sent)


def test_a_masked_input_is_made_once_and_only_whole() -> None:
    server, clients = keys_shared(("m0", "m1", "m2"), config(2, LENGTH))
    masking = clients["m0"].masking(_vectors(1, 1)["m0"], server.inbox("m0"))
    blocks = masking.blocks(BLOCK)
    next(blocks)
    with pytest.raises(SecAggError, match="not complete"):
        _ = masking.result
    for _ in blocks:
        pass
    assert masking.result.vector.size == LENGTH
    with pytest.raises(SecAggError, match="already made"):
        next(masking.blocks())
    with pytest.raises(SecAggError):  # the step is over: no second masking of the round
        clients["m0"].masking(_vectors(1, 1)["m0"], server.inbox("m0"))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), members=st.integers(1, 8))
def test_in_place_decoding_equals_decoding(seed: int, members: int) -> None:
    q = Quantizer(clip=1.0, max_members=members)
    rng = np.random.default_rng(seed)
    total = sum(
        (q.encode(rng.uniform(-1, 1, BLOCK + 77).astype(np.float32)) for _ in range(members)),
        start=np.zeros(BLOCK + 77, np.uint32),
    )
    MaskStreams([(bytes(16), 1), (bytes(16), -1)]).apply_all(total)  # masks cancel
    expect = q.decode(total)
    assert np.array_equal(q.decode_in_place(total.copy()), expect)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), members=st.integers(1, 8), clip=st.floats(0.01, 100.0))
def test_float32_decoding_is_bit_identical_to_the_float64_path(
    seed: int, members: int, clip: float
) -> None:
    # the block decode casts int32 -> float32 and scales in float32; the sum decoded before
    # went int32 -> float64, scaled, then -> float32: one rounding each, same bits
    q = Quantizer(clip=clip, max_members=members)
    ring = np.random.default_rng(seed).integers(0, 2**32, BLOCK + 77, dtype=np.uint64)
    total = ring.astype(np.uint32)
    total[:5] = [0, 1, 2**31 - 1, 2**31, 2**32 - 1]
    via_float64 = (total.view(np.int32).astype(np.float64) * (1.0 / q.scale)).astype(np.float32)
    decoded = q.decode_in_place(total.copy())
    assert np.array_equal(decoded.view(np.uint32), via_float64.view(np.uint32))
    assert np.array_equal(q.decode(total).view(np.uint32), via_float64.view(np.uint32))
