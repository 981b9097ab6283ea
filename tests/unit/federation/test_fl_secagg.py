"""Secure aggregation: exact sums, dropouts, refusals and what the aggregator can see."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from qdspace.federation import shamir
from qdspace.federation.errors import (
    BadShares,
    InconsistentView,
    RefusalReason,
    RosterRefused,
    SecAggAbort,
    SecAggError,
    UpdateRefused,
)
from qdspace.federation.params import Vector
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_masks import BLOCK, MaskStreams, Quantizer, expand
from qdspace.federation.secagg_messages import (
    EncryptedShare,
    MaskedInput,
    SecAggConfig,
    SecAggResult,
    UnmaskRequest,
)
from qdspace.federation.secagg_server import SecAggServer

LENGTH = 1000
QUANT = Quantizer(clip=1.0, max_members=8)


def config(threshold: int, length: int = LENGTH, coordinator: str = "") -> SecAggConfig:
    return SecAggConfig("job-1", 3, threshold, length, QUANT, coordinator=coordinator)


#: Each member's certificate-bound Ed25519 key (the node reads it from the certificate).
SIGNING = {name: SigningKey.generate() for name in [*"abcd", *(f"m{i}" for i in range(8))]}
VERIFY = {name: key.verify_key for name, key in SIGNING.items()}


def client(member: str, cfg: SecAggConfig) -> SecAggClient:
    return SecAggClient(member, cfg, SIGNING[member])


def advertise(server: SecAggServer, c: SecAggClient) -> None:
    server.receive_advert(c.advertise(), VERIFY[c.member])


def keys_shared(
    members: Collection[str], cfg: SecAggConfig
) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    """A server and one client per member, in ``members``' order, past steps 1 and 2
    (keys advertised and shared by everyone)."""
    server = SecAggServer(cfg, set(members))
    clients = {m: client(m, cfg) for m in members}
    for c in clients.values():
        advertise(server, c)
    roster = server.close_adverts()
    for m, c in clients.items():
        server.receive_shares(m, c.share_keys(roster, VERIFY))
    server.close_shares()
    return server, clients


def confirm_all(server: SecAggServer, clients: dict[str, SecAggClient]) -> UnmaskRequest:
    """Step 4 for every survivor; the request each then unmasks for."""
    request = server.unmask_request()
    for m in request.survivors:
        server.receive_confirmation(clients[m].confirm(request))
    return server.close_consistency()


def inputs(n: int, length: int = LENGTH, seed: int = 0) -> dict[str, Vector]:
    rng = np.random.default_rng(seed)
    return {f"m{i}": rng.uniform(-1, 1, length).astype(np.float32) for i in range(n)}


def run_round(
    vectors: dict[str, Vector],
    threshold: int,
    *,
    skip_share: Collection[str] = (),
    skip_mask: Collection[str] = (),
    skip_unmask: Collection[str] = (),
) -> tuple[SecAggResult, SecAggServer, dict[str, MaskedInput]]:
    """Drive one round; members in ``skip_*`` go silent from that step on."""
    cfg = config(threshold, len(next(iter(vectors.values()))))
    server = SecAggServer(cfg, set(vectors))
    clients = {m: client(m, cfg) for m in vectors}
    for c in clients.values():
        advertise(server, c)
    roster = server.close_adverts()
    for m, c in clients.items():
        shares = c.share_keys(roster, VERIFY)
        if m not in skip_share:
            server.receive_shares(m, shares)
    server.close_shares()
    masked = {}
    for m, c in clients.items():
        if m in skip_share:
            continue
        y = c.mask(vectors[m], server.inbox(m))
        masked[m] = y
        if m not in skip_mask:
            server.receive_masked(y)
    server.close_masked()
    request = confirm_all(server, clients)
    for m in request.survivors:
        if m not in skip_unmask:
            server.receive_unmask(clients[m].unmask(request))
    return server.finish(), server, masked


def plain_sum(vectors: dict[str, Vector], members: Collection[str]) -> Vector:
    return np.sum([vectors[m] for m in members], axis=0, dtype=np.float64).astype(np.float32)


# --- Shamir ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 7),
    data=st.data(),
)
def test_any_t_shares_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, n, t)
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(t, n))]
    restored = [shamir.Share.from_bytes(s.x, s.to_bytes()) for s in chosen]
    assert shamir.combine(restored, t) == secret


def test_fewer_than_t_shares_do_not_rebuild() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 5, 3)
    with pytest.raises(SecAggError, match="cannot rebuild"):
        shamir.combine(shares[:2], 3)
    # Pretending t=2 with shares of a t=3 polynomial gives garbage, not the secret.
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir.combine(shares[:2], 2)
    with pytest.raises(SecAggError, match="repeated"):
        shamir.combine([shares[0], shares[0], shares[1]], 3)
    with pytest.raises(SecAggError, match="threshold"):
        shamir.split(secret, 2, 3)


# --- quantisation and sums -------------------------------------------------------------


def test_quantizer_round_trip_within_half_a_step() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 10_000).astype(np.float32)
    back = QUANT.decode(QUANT.encode(x))
    assert np.max(np.abs(back - x)) <= QUANT.max_error(1)
    assert QUANT.max_error(1) < 1e-7
    np.testing.assert_array_equal(QUANT.decode(QUANT.encode(np.float32([5.0, -9.0]))), [1, -1])


def test_sum_equals_plain_sum_within_quantisation_error() -> None:
    vectors = inputs(5)
    result, _, _ = run_round(vectors, threshold=3)
    assert result.members == tuple(sorted(vectors))
    error = np.max(np.abs(result.total - plain_sum(vectors, vectors)))
    assert error <= QUANT.max_error(5) + 1e-6
    np.testing.assert_allclose(result.mean, plain_sum(vectors, vectors) / 5, atol=1e-6)


def test_member_dropping_after_sharing_keys_is_recovered() -> None:
    vectors = inputs(5, seed=2)
    result, _, _ = run_round(vectors, threshold=3, skip_mask={"m1", "m3"})
    assert result.members == ("m0", "m2", "m4")
    assert np.max(np.abs(result.total - plain_sum(vectors, result.members))) < 1e-6


def test_member_dropping_after_masking_is_recovered() -> None:
    vectors = inputs(4, seed=3)
    result, _, _ = run_round(vectors, threshold=3, skip_unmask={"m2"})
    assert result.members == ("m0", "m1", "m2", "m3")
    assert np.max(np.abs(result.total - plain_sum(vectors, vectors))) < 1e-6


def test_member_that_never_shared_keys_is_left_out() -> None:
    vectors = inputs(4, seed=4)
    result, _, _ = run_round(vectors, threshold=2, skip_share={"m0"})
    assert result.members == ("m1", "m2", "m3")
    assert np.max(np.abs(result.total - plain_sum(vectors, result.members))) < 1e-6


def test_too_many_dropouts_abort_the_round() -> None:
    with pytest.raises(SecAggAbort, match="masked inputs arrived"):
        run_round(inputs(4), threshold=3, skip_mask={"m0", "m1"})
    with pytest.raises(SecAggAbort, match="unmask responses"):
        run_round(inputs(4), threshold=3, skip_unmask={"m0", "m1"})


# --- refusals --------------------------------------------------------------------------


def test_aggregator_refuses_what_does_not_fit_with_a_reason() -> None:
    cfg = config(2)
    server = SecAggServer(cfg, {"a", "b", "c", "d"})
    clients = {m: client(m, cfg) for m in "abcd"}
    mallory = SecAggClient("mallory", cfg, SigningKey.generate())
    with pytest.raises(UpdateRefused) as exc:
        server.receive_advert(mallory.advertise(), VERIFY["a"])
    assert exc.value.reason is RefusalReason.NOT_A_MEMBER
    for c in clients.values():
        advertise(server, c)
    with pytest.raises(UpdateRefused) as exc:
        advertise(server, client("a", cfg))
    assert exc.value.reason is RefusalReason.DUPLICATE
    roster = server.close_adverts()
    shares = {m: c.share_keys(roster, VERIFY) for m, c in clients.items()}
    with pytest.raises(UpdateRefused) as exc:
        server.receive_shares("a", shares["a"][:1])
    assert exc.value.reason is RefusalReason.WRONG_SHAPE
    with pytest.raises(UpdateRefused) as exc:
        server.receive_masked(MaskedInput("a", np.zeros(LENGTH, np.uint32)))
    assert exc.value.reason is RefusalReason.WRONG_PHASE
    server.receive_shares("a", shares["a"])
    server.receive_shares("b", shares["b"])
    server.receive_shares("c", shares["c"])
    server.close_shares()
    with pytest.raises(UpdateRefused) as exc:
        server.receive_masked(MaskedInput("d", np.zeros(LENGTH, np.uint32)))
    assert exc.value.reason is RefusalReason.DROPPED
    with pytest.raises(UpdateRefused) as exc:
        server.receive_masked(MaskedInput("a", np.zeros(LENGTH + 1, np.uint32)))
    assert exc.value.reason is RefusalReason.WRONG_SHAPE


def test_member_refuses_to_reveal_both_shares_of_one_peer() -> None:
    cfg = config(2)
    server = SecAggServer(cfg, {"a", "b", "c"})
    clients = {m: client(m, cfg) for m in "abc"}
    for c in clients.values():
        advertise(server, c)
    roster = server.close_adverts()
    for m, c in clients.items():
        server.receive_shares(m, c.share_keys(roster, VERIFY))
    server.close_shares()
    vectors = inputs(3)
    for m, c in clients.items():
        server.receive_masked(c.mask(vectors[f"m{'abc'.index(m)}"], server.inbox(m)))
    # A curious aggregator asks for b's seed AND b's key share: refused before signing.
    with pytest.raises(InconsistentView, match="survivors and dropped"):
        clients["a"].confirm(UnmaskRequest(("a", "b", "c"), ("b",)))


def test_tampered_share_and_foreign_round_are_detected() -> None:
    cfg = config(2)
    a, b = client("a", cfg), client("b", cfg)
    roster = tuple(sorted([a.advertise(), b.advertise()], key=lambda x: x.member))
    to_a = b.share_keys(roster, VERIFY)[0]
    a.share_keys(roster, VERIFY)
    bad = EncryptedShare(to_a.sender, to_a.receiver, to_a.ciphertext[:-1] + b"\x00")
    with pytest.raises(BadShares, match="does not decrypt") as named:
        a.mask(np.zeros(LENGTH, np.float32), [bad])
    assert named.value.member == "b"
    other = SecAggConfig("job-1", 4, 2, LENGTH, QUANT)
    c, d = client("c", other), client("d", cfg)
    adverts = [c.advertise(), d.advertise()]
    # c's advert is signed for round 4: in a round-3 roster its signature does not verify
    with pytest.raises(RosterRefused, match="key advert of c"):
        d.share_keys(adverts, VERIFY)


def test_coordinator_checks_adverts_against_the_callers_key() -> None:
    cfg = config(2)
    server = SecAggServer(cfg, {"a", "b"})
    advertise(server, client("a", cfg))
    forged = SecAggClient("b", cfg, SIGNING["a"]).advertise()
    with pytest.raises(UpdateRefused) as exc:
        server.receive_advert(forged, VERIFY["b"])
    assert exc.value.reason is RefusalReason.BAD_SIGNATURE


# --- what the aggregator sees ----------------------------------------------------------


def chi_square_p(values: np.ndarray, bins: int = 256) -> float:
    """p-value that ``values`` (top bytes of ring elements) are uniform over ``bins``."""
    counts = np.bincount(values, minlength=bins)
    expected = values.size / bins
    x2 = float(((counts - expected) ** 2 / expected).sum())
    k = bins - 1  # Wilson-Hilferty normal approximation of the chi-square tail
    z = ((x2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_single_masked_update_looks_uniformly_random() -> None:
    n = 50_000
    structured = {
        "m0": np.zeros(n, np.float32),
        "m1": np.full(n, 0.5, np.float32),
        "m2": np.linspace(-1, 1, n).astype(np.float32),
    }
    _, _, masked = run_round(structured, threshold=2)
    for member, vec in structured.items():
        seen = masked[member].vector
        assert chi_square_p(seen >> 24) > 1e-4, member
        assert chi_square_p(seen & 0xFF) > 1e-4, member
        if np.ptp(vec) > 0:
            corr = np.corrcoef(seen.astype(np.float64), vec.astype(np.float64))[0, 1]
            assert abs(corr) < 0.03, member
        # The same test does reject the unmasked encoding, so it can fail.
        assert chi_square_p(QUANT.encode(vec) >> 24) < 1e-6


def test_blockwise_masks_equal_whole_expansions() -> None:
    # Masks are made block by block (each seed's AES-128-CTR stream continues across
    # blocks); the result must be exactly the whole-vector expansions added up.
    n = 2 * BLOCK + 12_345
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**32, n, dtype=np.uint32)
    seeds = [(bytes([i]) * 16, sign) for i, sign in ((1, 1), (2, -1), (3, 1))]
    expected = base.copy()
    for seed, sign in seeds:
        if sign > 0:
            expected += expand(seed, n)
        else:
            expected -= expand(seed, n)
    got = base.copy()
    MaskStreams(seeds).apply_all(got)
    assert np.array_equal(got, expected)
    q = Quantizer(clip=1.0, max_members=3)
    vec = rng.uniform(-1.5, 1.5, n).astype(np.float32)
    scaled = np.clip(vec * np.float32(q.scale), -q.scale, q.scale)
    assert np.array_equal(q.encode(vec).view(np.int32), np.rint(scaled).astype(np.int32))
    with pytest.raises(SecAggError, match="sign"):
        MaskStreams([(bytes(16), 2)])


def test_a_member_masks_with_at_least_t_peers_so_that_one_is_honest() -> None:
    """A coordinator X and one accomplice M (n=5, t=3, c=1: inside the bound the design
    covers) hand honest A an inbox with only their own shares. A used to mask with X and
    M alone (its own share made the count of three), so once the honest members revealed
    A's self-mask seed, X removed every mask from A's update. Now A refuses to mask with
    fewer than t others."""
    cfg = config(3)
    members = ("a", "b", "c", "m0", "m1")  # m0 plays the accomplice, m1 the coordinator

    def a_with_shares_of(senders: set[str]) -> tuple[SecAggClient, list[Any]]:
        clients = {m: client(m, cfg) for m in members}
        roster = sorted((c.advertise() for c in clients.values()), key=lambda a: a.member)
        shares = [s for c in clients.values() for s in c.share_keys(roster, VERIFY)]
        return clients["a"], [s for s in shares if s.receiver == "a" and s.sender in senders]

    member, isolated = a_with_shares_of({"m0", "m1"})
    with pytest.raises(SecAggAbort, match="only 2 other members shared keys with a"):
        member.mask(inputs(1)["m0"], isolated)
    # with the shares of t others it masks (one of them is honest whoever colludes)
    member, three = a_with_shares_of({"m0", "m1", "b"})
    assert member.mask(inputs(1)["m0"], three).vector.size == LENGTH
