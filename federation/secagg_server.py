"""The aggregator's side of secure aggregation: route shares, sum masked inputs, unmask.

It never sees a member's update: only ciphertexts it cannot open, masked vectors that
look uniformly random, and, after the consistency round, exactly the shares needed to
remove the masks from the sum (see ``federation.secagg``). Every revealed share must
carry its dealer's signature, so when unmasking fails the member at fault is named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from nacl import bindings
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from qdspace.federation import shamir
from qdspace.federation.errors import (
    BadShares,
    RefusalReason,
    SecAggAbort,
    SecAggError,
    UpdateRefused,
)
from qdspace.federation.secagg_masks import (
    BLOCK,
    MaskStreams,
    Ring,
    add_pieces,
    pair_seed,
    self_seed,
)
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    MaskedPieces,
    Phase,
    SecAggConfig,
    SecAggResult,
    ShareKind,
    SignedShare,
    UnmaskRequest,
    UnmaskResponse,
    check_advert_keys,
    check_protocol,
    check_roster,
    roster_index,
    split_signed_bytes,
    verify_advert,
    verify_share,
)


@dataclass
class SecAggServer:
    """The aggregator's side of one round: routes shares, sums masked inputs, unmasks."""

    config: SecAggConfig
    members: Collection[str]
    phase: Phase = Phase.ADVERTISE
    _adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    _keys: dict[str, VerifyKey] = field(default_factory=dict)
    _roster: tuple[KeyAdvert, ...] = ()
    _shares: dict[str, list[EncryptedShare]] = field(default_factory=dict)
    _shared: frozenset[str] = frozenset()
    _total: Ring | None = None
    _survivors: tuple[str, ...] = ()
    _dropped: tuple[str, ...] = ()
    _confirmations: dict[str, Confirmation] = field(default_factory=dict)
    _responses: dict[str, UnmaskResponse] = field(default_factory=dict)
    _reports: dict[str, str] = field(default_factory=dict)

    def _expect(self, phase: Phase, member: str, what: str) -> None:
        if member not in self.members:
            raise UpdateRefused(RefusalReason.NOT_A_MEMBER, f"{member} is not a member of the job")
        if self.phase is not phase:
            raise UpdateRefused(
                RefusalReason.WRONG_PHASE,
                f"{what} from {member} arrived in phase {self.phase.name}, expected {phase.name}",
            )

    @property
    def roster(self) -> tuple[KeyAdvert, ...]:
        return self._roster

    @property
    def advertised(self) -> frozenset[str]:
        return frozenset(self._adverts)

    @property
    def shared(self) -> frozenset[str]:
        """Members whose key shares arrived (step 2)."""
        return self._shared

    @property
    def survivors(self) -> tuple[str, ...]:
        """Members whose masked input arrived (step 3)."""
        return self._survivors

    @property
    def dropped(self) -> tuple[str, ...]:
        """Members that shared keys but sent no masked input (known once step 3 closed)."""
        return self._dropped

    @property
    def reports(self) -> Mapping[str, str]:
        """Who reported whose key shares bad (step 3): reporter -> the member it names."""
        return self._reports

    @property
    def confirmed(self) -> frozenset[str]:
        """Survivors whose signature on the split arrived (step 4)."""
        return frozenset(self._confirmations)

    def unmask_request(self) -> UnmaskRequest:
        """The split to sign (consistency round), then with the signatures (unmasking)."""
        if self.phase.value < Phase.CONSISTENCY.value:
            raise UpdateRefused(
                RefusalReason.WRONG_PHASE, "masked inputs are still being collected"
            )
        confirmations: tuple[Confirmation, ...] = ()
        if self.phase.value >= Phase.UNMASK.value:
            confirmations = tuple(self._confirmations[m] for m in sorted(self._confirmations))
        return UnmaskRequest(self._survivors, self._dropped, confirmations)

    def receive_advert(self, advert: KeyAdvert, key: VerifyKey) -> None:
        """Step 1; ``key`` is the sender's certificate-bound Ed25519 key (from its TLS peer)."""
        self._expect(Phase.ADVERTISE, advert.member, "key advert")
        if advert.member in self._adverts:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{advert.member} already advertised keys")
        try:  # another protocol's masks would not cancel: refused by name, before anything
            check_protocol(advert)
        except SecAggError as exc:
            raise UpdateRefused(RefusalReason.WRONG_PROTOCOL, str(exc)) from exc
        try:
            verify_advert(advert, self.config, key)
        except SecAggError as exc:
            raise UpdateRefused(RefusalReason.BAD_SIGNATURE, str(exc)) from exc
        # refused here, naming its sender, and not at the roster's close: a roster with
        # one bad key could not be sent to anyone and the attempt would end for all
        taken = {k for a in self._adverts.values() for k in (a.mask_pk, a.cipher_pk)}
        try:
            check_advert_keys(advert, taken)
        except SecAggError as exc:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, str(exc)) from exc
        self._adverts[advert.member] = advert
        self._keys[advert.member] = key

    def close_adverts(self) -> tuple[KeyAdvert, ...]:
        """End step 1 (all arrived or deadline); the roster goes to every advertiser."""
        if self.phase is not Phase.ADVERTISE:
            raise SecAggError(f"cannot close adverts in phase {self.phase.name}")
        roster = tuple(self._adverts[m] for m in sorted(self._adverts))
        check_roster(roster, self.config, self._keys)
        self._roster, self.phase = roster, Phase.SHARE_KEYS
        return roster

    def receive_shares(self, member: str, shares: Sequence[EncryptedShare]) -> None:
        self._expect(Phase.SHARE_KEYS, member, "key shares")
        if member not in roster_index(self._roster):
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} did not advertise keys in time")
        if member in self._shared:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already sent its shares")
        receivers = sorted(s.receiver for s in shares)
        expected = sorted(a.member for a in self._roster if a.member != member)
        if receivers != expected or any(s.sender != member for s in shares):
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{member} must send one share to each of {expected}"
            )
        for share in shares:
            self._shares.setdefault(share.receiver, []).append(share)
        self._shared = self._shared | {member}

    def close_shares(self) -> frozenset[str]:
        """End step 2; members that sent no shares are out of the round."""
        if self.phase is not Phase.SHARE_KEYS:
            raise SecAggError(f"cannot close key sharing in phase {self.phase.name}")
        if len(self._shared) <= self.config.threshold:  # each masks with t others
            raise SecAggAbort(
                f"{len(self._shared)} members shared keys: each needs the keys of at least "
                f"{self.config.threshold} others (threshold {self.config.threshold})"
            )
        self.phase = Phase.MASKED_INPUT
        return self._shared

    def inbox(self, member: str) -> list[EncryptedShare]:
        """The shares addressed to ``member`` from members that completed step 2."""
        if self.phase.value < Phase.MASKED_INPUT.value or member not in self._shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} has no inbox in this round")
        return [s for s in self._shares.get(member, []) if s.sender in self._shared]

    def receive_masked(self, masked: MaskedInput | MaskedPieces) -> None:
        """Step 3: add a member's masked input to the round's sum.

        Everything is checked before the sum is touched, and adding cannot fail once
        begun, so an input refused for any reason leaves the sum exactly as it was.
        """
        self._expect(Phase.MASKED_INPUT, masked.member, "masked input")
        if masked.member not in self._shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{masked.member} did not share keys")
        if masked.member in self._survivors:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{masked.member} already sent its input")
        if masked.member in self._reports:
            raise UpdateRefused(
                RefusalReason.DROPPED,
                f"{masked.member} reported {self._reports[masked.member]}'s shares: "
                "it sends no masked input this attempt",
            )
        length = self.config.vector_len
        if isinstance(masked, MaskedPieces):
            if masked.nbytes != 4 * length:
                raise UpdateRefused(
                    RefusalReason.WRONG_SHAPE,
                    f"masked input of {masked.member} has {masked.nbytes} bytes, "
                    f"expected {4 * length}",
                )
            # summed straight from the received pieces (no copy of the input first)
            first = self._total is None
            if self._total is None:
                self._total = np.empty(length, dtype="<u4")
            add_pieces(self._total, masked.pieces, start=first)
            self._survivors = (*self._survivors, masked.member)
            return
        vec = masked.vector
        if vec.dtype != np.uint32 or vec.shape != (length,):
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"masked input of {masked.member} is {vec.dtype}{vec.shape}, "
                f"expected uint32({length},)",
            )
        if self._total is None:
            # the first input starts the sum: its own buffer when the caller handed it over
            self._total = vec if masked.owned and vec.flags.writeable else vec.copy()
        else:
            self._total += vec
        self._survivors = (*self._survivors, masked.member)

    def receive_report(self, reporter: str, accused: str) -> None:
        """Step 3, instead of a masked input: ``reporter`` found the share ``accused``
        dealt it unusable (it does not decrypt, is not signed, or is for another round).

        The share is sealed to the reporter, so the coordinator cannot tell which of the
        two lies; it knows one of them does (it relayed the ciphertext ``accused`` sent
        over its own channel). What follows is :meth:`left_out`'s. One report a member
        an attempt, so one member cannot name several others at once.
        """
        self._expect(Phase.MASKED_INPUT, reporter, "bad-share report")
        if reporter not in self._shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{reporter} did not share keys")
        if reporter in self._survivors:
            raise UpdateRefused(
                RefusalReason.DUPLICATE, f"{reporter} sent its masked input: it used every share"
            )
        if reporter in self._reports:
            raise UpdateRefused(
                RefusalReason.DUPLICATE,
                f"{reporter} already reported {self._reports[reporter]}'s shares this attempt",
            )
        if accused == reporter or accused not in self._shared:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{reporter} reported shares of a member that dealt it none this attempt",
            )
        self._reports[reporter] = accused

    def left_out(
        self, quorum: int, accused: Collection[str] = ()
    ) -> tuple[frozenset[str], frozenset[str], str]:
        """Who leaves the job after this attempt's bad-share reports, who stays accused,
        and why (in words).

        A member named by ``t`` reporters or more is left out alone: secure aggregation's
        privacy already rests on fewer than ``t`` members colluding, so ``t`` reporters
        cannot all lie (a member dealing garbage to everyone is out after one attempt,
        the members it cheated stay); a report it made itself is not believed. A member
        in ``accused`` (named before in a report whose two sides stayed) that is named
        again is left out, even if that ends the job. Any other report leaves out both
        sides (either may be the liar, so a false report costs its maker its own seat),
        but only while ``quorum`` members are left: else both stay, and the accused of
        those reports are returned second, to be remembered. An attempt whose reports
        do not leave out both their sides is not aggregated (``SecureRounds``; the
        module docstring of ``round_secagg`` says why).
        """
        named: dict[str, list[str]] = {}
        for reporter, accused_now in sorted(self._reports.items()):
            named.setdefault(accused_now, []).append(reporter)
        alone = {a for a, by in named.items() if len(by) >= self.config.threshold}
        said = [
            f"{', '.join(named[a])} reported {a}'s shares: {a} is left out" for a in sorted(alone)
        ]
        pairs = [
            (r, a)
            for a, by in sorted(named.items())
            if a not in alone
            for r in by
            if r not in alone
        ]
        again = {a for _, a in pairs if a in set(accused)}
        said += [
            f"{r} reported {a}'s shares, {a} was reported in an earlier attempt too: "
            f"{a} is left out"
            for r, a in pairs
            if a in again
        ]
        pairs = [(r, a) for r, a in pairs if a not in again and r not in again]
        out = alone | again
        both = {m for pair in pairs for m in pair}
        if pairs and len(set(self.members) - out - both) >= quorum:
            said += [f"{r} reported {a}'s shares: both are left out" for r, a in pairs]
            return frozenset(out | both), frozenset(), "; ".join(said)
        if pairs:
            reports = "; ".join(f"{r} reported {a}'s shares" for r, a in pairs)
            said.append(
                f"{reports}: leaving both sides out would leave fewer than {quorum} members, "
                "so they stay (the accused is left out if reported again)"
            )
        return frozenset(out), frozenset(a for _, a in pairs), "; ".join(said)

    def close_masked(self) -> UnmaskRequest:
        """End step 3; the split every survivor is asked to sign."""
        if self.phase is not Phase.MASKED_INPUT:
            raise SecAggError(f"cannot close masked input in phase {self.phase.name}")
        if len(self._survivors) < self.config.threshold:
            raise SecAggAbort(
                f"{len(self._survivors)} masked inputs arrived, threshold {self.config.threshold}"
            )
        self._survivors = tuple(sorted(self._survivors))
        self._dropped = tuple(sorted(self._shared - set(self._survivors)))
        self.phase = Phase.CONSISTENCY
        return UnmaskRequest(self._survivors, self._dropped)

    def receive_confirmation(self, confirmation: Confirmation) -> None:
        """Step 4: a survivor's signature on the split; refused unless it verifies."""
        member = confirmation.member
        self._expect(Phase.CONSISTENCY, member, "consistency signature")
        if member not in self._survivors:
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} sent no masked input")
        if member in self._confirmations:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already signed the split")
        body = split_signed_bytes(self.config.context, self._survivors, self._dropped)
        try:
            self._keys[member].verify(body, confirmation.signature)
        except (BadSignatureError, ValueError, TypeError) as exc:
            raise UpdateRefused(
                RefusalReason.BAD_SIGNATURE,
                f"consistency signature of {member} does not verify for this round's split",
            ) from exc
        self._confirmations[member] = confirmation

    def close_consistency(self) -> UnmaskRequest:
        """End step 4: enough survivors other than the coordinator must have signed."""
        if self.phase is not Phase.CONSISTENCY:
            raise SecAggError(f"cannot close the consistency round in phase {self.phase.name}")
        vouching = [m for m in self._confirmations if m != self.config.coordinator]
        if len(vouching) < self.config.threshold:
            raise SecAggAbort(
                f"{len(vouching)} survivors other than the coordinator signed the survivor set, "
                f"threshold {self.config.threshold}"
            )
        self.phase = Phase.UNMASK
        return self.unmask_request()

    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Step 5; every revealed share must carry its dealer's signature for this responder."""
        self._expect(Phase.UNMASK, response.member, "unmask response")
        if response.member not in self._survivors:
            raise UpdateRefused(RefusalReason.DROPPED, f"{response.member} sent no masked input")
        if response.member in self._responses:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{response.member} already unmasked")
        if set(response.seed_shares) != set(self._survivors) or set(response.key_shares) != set(
            self._dropped
        ):
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"unmask response of {response.member} names other members",
            )
        for kind, shares in (
            (ShareKind.SEED, response.seed_shares),
            (ShareKind.KEY, response.key_shares),
        ):
            for dealer, share in shares.items():
                self._check_revealed(response.member, dealer, kind, share)
        self._responses[response.member] = response

    def _check_revealed(
        self, holder: str, dealer: str, kind: ShareKind, share: SignedShare
    ) -> None:
        if not verify_share(share, self.config.context, dealer, holder, kind, self._keys[dealer]):
            raise UpdateRefused(
                RefusalReason.BAD_SIGNATURE,
                f"{holder} revealed a {kind.value} share of {dealer} that {dealer} did not deal "
                f"to it (bad shares from {holder})",
            )
        try:
            shamir.Share.from_bytes(1, share.value)
        except SecAggError as exc:  # signed but malformed: the dealer made it so
            raise BadShares(dealer, f"its {kind.value} share for {holder}: {exc}") from exc

    @property
    def responses(self) -> int:
        return len(self._responses)

    @property
    def responded(self) -> frozenset[str]:
        """Survivors whose unmask response arrived (step 5)."""
        return frozenset(self._responses)

    def finish(self) -> SecAggResult:
        """Remove every mask left in the sum; needs ``threshold`` unmask responses."""
        if self.phase is not Phase.UNMASK or self._total is None:
            raise SecAggError(f"cannot finish in phase {self.phase.name}")
        if len(self._responses) < self.config.threshold:
            raise SecAggAbort(
                f"{len(self._responses)} unmask responses, threshold {self.config.threshold}"
            )
        index, adverts = roster_index(self._roster), {a.member: a for a in self._roster}
        ctx, length = self.config.context, self.config.vector_len
        total = self._total
        seeds: list[tuple[bytes, int]] = []
        for member in self._survivors:
            seed = self._rebuild(member, index, ShareKind.SEED)
            if hashlib.sha256(seed).digest() != adverts[member].seed_commitment:
                raise BadShares(member, "its signed seed shares do not rebuild its commitment")
            seeds.append((self_seed(seed, ctx), -1))
        for gone in self._dropped:
            secret = self._rebuild(gone, index, ShareKind.KEY)
            if bindings.crypto_scalarmult_base(secret) != adverts[gone].mask_pk:
                raise BadShares(gone, "its signed mask-key shares do not rebuild its public key")
            for member in self._survivors:
                seed = pair_seed(secret, adverts[member].mask_pk, gone, member, ctx)
                seeds.append((seed, -1 if member < gone else 1))
        if total.size != length:
            raise SecAggError(f"masked sum has {total.size} elements, expected {length}")
        # all masks removed and the sum decoded in one blockwise pass: each block is
        # decoded while it is still in cache, in the sum's own memory (the sum is ours
        # alone now: no fresh 50 MB array)
        streams, quantizer = MaskStreams(seeds), self.config.quantizer
        for start in range(0, total.size, BLOCK):
            part = total[start : start + BLOCK]
            streams.apply(part)
            quantizer.decode_block(part)
        self.phase = Phase.DONE
        return SecAggResult(total.view(np.float32), self._survivors)

    def _rebuild(self, member: str, index: Mapping[str, int], kind: ShareKind) -> bytes:
        """``member``'s secret from the revealed shares (all dealer-signed, checked on arrival).

        Every share must lie on one polynomial of degree ``t - 1``; since the dealer signed
        each of them, shares that do not are the dealer's fault and name it.
        """
        shares = []
        for responder, response in sorted(self._responses.items()):
            signed = (response.seed_shares if kind is ShareKind.SEED else response.key_shares)[
                member
            ]
            shares.append(shamir.Share.from_bytes(index[responder], signed.value))
        if not shamir.consistent(shares, self.config.threshold):
            raise BadShares(member, f"its signed {kind.value} shares are not of one polynomial")
        try:
            return shamir.combine(shares, self.config.threshold)
        except SecAggError as exc:
            raise BadShares(member, f"its signed {kind.value} shares: {exc}") from exc
