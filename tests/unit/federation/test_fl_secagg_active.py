"""Secure aggregation against a lying coordinator and against members that deal bad shares.

The coordinator here is also a member (``m0``), as SunArc is in the reference job: it
relays every message, so it may swap keys in the roster, show different survivor sets
to different members, or replay signatures. Honest members must refuse, and the
coordinator must never hold both kinds of share (self-mask seed and pairwise mask key)
of one member, which is what removing that member's masks alone would take.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from nacl.public import Box, PublicKey
from nacl.signing import SigningKey, VerifyKey

from qdspace.federation import secagg, secagg_messages, shamir
from qdspace.federation.errors import (
    BadShares,
    InconsistentView,
    RefusalReason,
    RosterRefused,
    SecAggAbort,
    UpdateRefused,
)
from qdspace.federation.job import JobSpec, JobSpecError
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_masks import Quantizer
from qdspace.federation.secagg_messages import (
    SecAggConfig,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.secagg_server import SecAggServer

LENGTH = 64
COORDINATOR = "m0"


@dataclass
class Round:
    """``n`` members ``m0..m{n-1}`` (``m0`` coordinates) brought to the consistency round."""

    n: int
    t: int
    cfg: SecAggConfig = field(init=False)
    server: SecAggServer = field(init=False)
    clients: dict[str, SecAggClient] = field(init=False)
    signing: dict[str, SigningKey] = field(init=False)
    vectors: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        quant = Quantizer(clip=1.0, max_members=self.n)
        self.cfg = SecAggConfig("job-a", 1, self.t, LENGTH, quant, coordinator=COORDINATOR)
        names = [f"m{i}" for i in range(self.n)]
        self.signing = {m: SigningKey.generate() for m in names}
        self.server = SecAggServer(self.cfg, set(names))
        self.clients = {m: SecAggClient(m, self.cfg, self.signing[m]) for m in names}
        rng = np.random.default_rng(self.n)
        self.vectors = {m: rng.uniform(-1, 1, LENGTH).astype(np.float32) for m in names}

    @property
    def verify(self) -> dict[str, VerifyKey]:
        return {m: k.verify_key for m, k in self.signing.items()}

    @property
    def honest(self) -> list[str]:
        return [m for m in self.clients if m != COORDINATOR]

    def advertise(self) -> tuple[secagg_messages.KeyAdvert, ...]:
        for m, c in self.clients.items():
            self.server.receive_advert(c.advertise(), self.verify[m])
        return self.server.close_adverts()

    def to_masked(self, *, skip_mask: tuple[str, ...] = ()) -> None:
        roster = self.advertise()
        for m, c in self.clients.items():
            self.server.receive_shares(m, c.share_keys(roster, self.verify))
        self.server.close_shares()
        for m, c in self.clients.items():
            masked = c.mask(self.vectors[m], self.server.inbox(m))
            if m not in skip_mask:
                self.server.receive_masked(masked)
        self.server.close_masked()


# --- key swapping -------------------------------------------------------------------------


def test_members_refuse_a_roster_with_a_swapped_key() -> None:
    rnd = Round(3, 2)
    roster = rnd.advertise()
    victim = roster[2]
    assert victim.member == "m2"
    # The coordinator puts keys of its own in m2's advert, so it could open what the
    # others seal for m2. Unsigned, signed by itself, or with m2's old signature: refused.
    evil = SecAggClient("m2", rnd.cfg, rnd.signing[COORDINATOR]).advertise()
    swapped = [
        replace(evil, signature=b""),
        evil,  # signed, but with the coordinator's key
        replace(evil, signature=victim.signature),  # m2's signature over other keys
    ]
    for fake in swapped:
        forged = (*roster[:2], fake)
        for m in ("m1", "m2"):
            honest = SecAggClient(m, rnd.cfg, rnd.signing[m])
            honest.advertise()
            with pytest.raises(RosterRefused, match="key advert of m2"):
                honest.share_keys(forged, rnd.verify)
    # A roster naming a member whose certificate-bound key is unknown is refused as well.
    only = {m: k for m, k in rnd.verify.items() if m != "m2"}
    with pytest.raises(RosterRefused, match="m2"):
        rnd.clients["m1"].share_keys(roster, only)


def test_member_refuses_a_roster_that_replaced_its_own_keys() -> None:
    rnd = Round(3, 2)
    roster = rnd.advertise()
    other = SecAggClient("m1", rnd.cfg, rnd.signing["m1"]).advertise()  # validly signed
    with pytest.raises(RosterRefused, match="own keys"):
        rnd.clients["m1"].share_keys((roster[0], other, roster[2]), rnd.verify)


# --- inconsistent survivor sets -----------------------------------------------------------


def _split_attack(n: int, t: int, in_first: frozenset[str]) -> tuple[dict[str, set[str]], int]:
    """The coordinator tells members in ``in_first`` that everyone survived and the others
    that the target (the last member) dropped; it signs both splits itself and forwards
    every signature that verifies. Returns, per kind, the honest members whose share of
    the target it obtained, and how many honest members aborted."""
    rnd = Round(n, t)
    target = f"m{n - 1}"
    rnd.to_masked()
    everyone = tuple(sorted(rnd.clients))
    first = UnmaskRequest(everyone, ())
    second = UnmaskRequest(tuple(m for m in everyone if m != target), (target,))
    shown = {m: first if m in in_first else second for m in rnd.honest}
    signatures: dict[int, list[secagg_messages.Confirmation]] = {0: [], 1: []}
    for i, split in enumerate((first, second)):  # the coordinator signs both
        body = secagg_messages.split_signed_bytes(rnd.cfg.context, split.survivors, split.dropped)
        sig = rnd.signing[COORDINATOR].sign(body).signature
        signatures[i].append(secagg_messages.Confirmation(COORDINATOR, sig))
    aborted, signed = 0, {}
    for m in rnd.honest:
        try:
            signed[m] = rnd.clients[m].confirm(shown[m])
        except InconsistentView:
            aborted += 1  # the target itself refuses a split that drops it
            continue
        signatures[0 if shown[m] is first else 1].append(signed[m])
    got: dict[str, set[str]] = {"seed": set(), "key": set()}
    for m in signed:
        split = shown[m]
        full = replace(split, confirmations=tuple(signatures[0 if split is first else 1]))
        try:
            response = rnd.clients[m].unmask(full)
        except InconsistentView:
            aborted += 1
            continue
        if target in response.seed_shares:
            got["seed"].add(m)
        if target in response.key_shares:
            got["key"].add(m)
    return got, aborted


@pytest.mark.parametrize(("n", "t"), [(3, 2), (4, 3), (5, 3), (5, 4)])
def test_coordinator_showing_two_survivor_sets_never_gets_both_shares_of_one_member(
    n: int, t: int
) -> None:
    honest = [f"m{i}" for i in range(1, n)]
    for size in range(1, len(honest)):
        for group in itertools.combinations(honest, size):
            got, aborted = _split_attack(n, t, frozenset(group))
            # Never both kinds from honest members; with its own single share of each
            # kind, the coordinator stays below the threshold for at least one kind.
            assert not (got["seed"] and got["key"]), (group, got)
            assert min(len(got["seed"]), len(got["key"])) + 1 < t, (group, got)
            assert aborted >= 1, group


def test_members_abort_when_asked_to_unmask_another_split_than_they_signed() -> None:
    rnd = Round(3, 2)
    rnd.to_masked()
    split = rnd.server.unmask_request()
    for m in split.survivors:
        rnd.server.receive_confirmation(rnd.clients[m].confirm(split))
    request = rnd.server.close_consistency()
    other = replace(request, survivors=("m0", "m1"), dropped=("m2",))
    with pytest.raises(InconsistentView, match="signed survivors"):
        rnd.clients["m1"].unmask(other)


def test_the_coordinators_own_signature_does_not_count() -> None:
    rnd = Round(3, 2)
    rnd.to_masked()
    split = rnd.server.unmask_request()
    signed = {m: rnd.clients[m].confirm(split) for m in split.survivors}
    # m2's signature withheld: m1 sees m0 (the coordinator) and itself -> one voucher
    partial = replace(split, confirmations=(signed["m0"], signed["m1"]))
    with pytest.raises(InconsistentView, match="only 1 survivors other than the coordinator"):
        rnd.clients["m1"].unmask(partial)
    # a signature of m2 over another split does not count either
    body = secagg_messages.split_signed_bytes(rnd.cfg.context, ("m0", "m2"), ("m1",))
    wrong = secagg_messages.Confirmation("m2", rnd.signing["m2"].sign(body).signature)
    with pytest.raises(InconsistentView):
        rnd.clients["m2"].unmask(replace(split, confirmations=(signed["m0"], wrong)))
    # and the server will not start unmasking without t non-coordinator signatures
    rnd.server.receive_confirmation(signed["m0"])
    rnd.server.receive_confirmation(signed["m1"])
    with pytest.raises(SecAggAbort, match="other than the coordinator"):
        rnd.server.close_consistency()


def test_honest_round_with_a_coordinator_member_sums_exactly() -> None:
    rnd = Round(5, 3)
    rnd.to_masked(skip_mask=("m4",))
    split = rnd.server.unmask_request()
    assert split.dropped == ("m4",)
    for m in split.survivors:
        rnd.server.receive_confirmation(rnd.clients[m].confirm(split))
    request = rnd.server.close_consistency()
    for m in request.survivors:
        rnd.server.receive_unmask(rnd.clients[m].unmask(request))
    result = rnd.server.finish()
    expected = np.sum([rnd.vectors[m] for m in result.members], axis=0)
    assert result.members == ("m0", "m1", "m2", "m3")
    np.testing.assert_allclose(result.total, expected, atol=1e-5)


# --- bad shares are attributed ------------------------------------------------------------


def _unmask_all(rnd: Round) -> None:
    split = rnd.server.unmask_request()
    for m in split.survivors:
        rnd.server.receive_confirmation(rnd.clients[m].confirm(split))
    request = rnd.server.close_consistency()
    for m in request.survivors:
        rnd.server.receive_unmask(rnd.clients[m].unmask(request))


def test_dealer_whose_shares_miss_its_commitment_is_named() -> None:
    rnd = Round(3, 2)
    cheat = rnd.clients["m1"]
    roster = rnd.advertise()
    cheat._seed = bytes(32)  # deals shares of a seed other than the one it committed to
    for m, c in rnd.clients.items():
        rnd.server.receive_shares(m, c.share_keys(roster, rnd.verify))
    rnd.server.close_shares()
    for m, c in rnd.clients.items():
        rnd.server.receive_masked(c.mask(rnd.vectors[m], rnd.server.inbox(m)))
    rnd.server.close_masked()
    _unmask_all(rnd)
    with pytest.raises(BadShares, match="bad shares from m1") as exc:
        rnd.server.finish()
    assert exc.value.member == "m1"


def test_dealer_of_shares_off_one_polynomial_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = Round(4, 3)
    roster = rnd.advertise()
    honest_split = shamir.split

    def crooked(secret: bytes, n: int, t: int) -> list[shamir.Share]:
        shares = honest_split(secret, n, t)
        last = shares[-1]
        return [*shares[:-1], shamir.Share(last.x, (last.y + 1) % shamir.PRIME)]

    for m, c in rnd.clients.items():
        if m == "m2":
            monkeypatch.setattr(shamir, "split", crooked)
        rnd.server.receive_shares(m, c.share_keys(roster, rnd.verify))
        monkeypatch.setattr(shamir, "split", honest_split)
    rnd.server.close_shares()
    for m, c in rnd.clients.items():
        rnd.server.receive_masked(c.mask(rnd.vectors[m], rnd.server.inbox(m)))
    rnd.server.close_masked()
    _unmask_all(rnd)
    with pytest.raises(BadShares, match="not of one polynomial") as exc:
        rnd.server.finish()
    assert exc.value.member == "m2"


def test_share_signed_with_a_wrong_key_names_its_dealer() -> None:
    rnd = Round(3, 2)
    roster = rnd.advertise()
    cheat = rnd.clients["m2"]
    shares = {m: c.share_keys(roster, rnd.verify) for m, c in rnd.clients.items()}
    # m2 re-deals m1's share signed under another key (sealed correctly, so it decrypts)
    bad_signer = SigningKey.generate()
    ks, ss = shamir.split(bytes(32), 3, 2)[0], shamir.split(bytes(32), 3, 2)[0]
    key = secagg_messages.SignedShare(
        ks.to_bytes(),
        bad_signer.sign(
            secagg_messages.share_signed_bytes(
                rnd.cfg.context, "m2", "m1", ShareKind.KEY, ks.to_bytes()
            )
        ).signature,
    )
    seed = secagg_messages.SignedShare(ss.to_bytes(), key.signature)
    payload = secagg._seal_payload(rnd.cfg, "m2", "m1", key, seed)
    box = Box(cheat._cipher_sk, PublicKey(roster[1].cipher_pk))
    forged = secagg_messages.EncryptedShare("m2", "m1", bytes(box.encrypt(payload)))
    for m, out in shares.items():
        rnd.server.receive_shares(m, out)
    rnd.server.close_shares()
    inbox = [s for s in rnd.server.inbox("m1") if s.sender != "m2"] + [forged]
    with pytest.raises(BadShares, match="not signed by it") as exc:
        rnd.clients["m1"].mask(rnd.vectors["m1"], inbox)
    assert exc.value.member == "m2"


def test_member_revealing_a_share_it_was_not_dealt_is_named() -> None:
    rnd = Round(4, 3)
    rnd.to_masked()
    split = rnd.server.unmask_request()
    for m in split.survivors:
        rnd.server.receive_confirmation(rnd.clients[m].confirm(split))
    request = rnd.server.close_consistency()
    responses = {m: rnd.clients[m].unmask(request) for m in request.survivors}
    good = responses["m3"]
    tampered_share = secagg_messages.SignedShare(
        bytes(shamir.SHARE_BYTES - 1) + b"\x01", good.seed_shares["m1"].signature
    )
    tampered = UnmaskResponse("m3", {**good.seed_shares, "m1": tampered_share}, good.key_shares)
    with pytest.raises(UpdateRefused, match="bad shares from m3") as exc:
        rnd.server.receive_unmask(tampered)
    assert exc.value.reason is RefusalReason.BAD_SIGNATURE
    # the round still completes from the three honest responses
    for m in ("m0", "m1", "m2"):
        rnd.server.receive_unmask(responses[m])
    result = rnd.server.finish()
    expected = np.sum(list(rnd.vectors.values()), axis=0)
    np.testing.assert_allclose(result.total, expected, atol=1e-5)


# --- the threshold ------------------------------------------------------------------------


def _terms(members: int, threshold: int, min_members: int | None = None) -> JobSpec:
    names = tuple(f"m{i}" for i in range(members))
    return JobSpec(
        job_id="t",
        coordinator=COORDINATOR,
        model="logreg",
        shapes=((2, 2),),
        rounds=1,
        min_members=min_members or members,
        members=names,
        secure_aggregation=True,
        threshold=threshold,
        update_clip=1.0,
    )


@pytest.mark.parametrize(("n", "t"), [(4, 2), (6, 3), (2, 1), (3, 1)])
def test_jobs_with_a_threshold_of_half_or_less_are_refused(n: int, t: int) -> None:
    with pytest.raises(JobSpecError, match=r"more than half .*t > n/2"):
        _terms(n, t)


def test_threshold_must_be_reachable_without_the_coordinator() -> None:
    with pytest.raises(JobSpecError, match="other than the coordinator"):
        _terms(3, 3)
    with pytest.raises(JobSpecError, match="min_members"):
        _terms(5, 4, min_members=3)
    assert _terms(3, 2).secagg_config(1, 1).coordinator == COORDINATOR
    assert _terms(5, 3).threshold == 3
