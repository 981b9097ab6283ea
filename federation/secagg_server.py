"""The aggregator's side of secure aggregation: route shares, sum masked inputs, unmask.

It never sees a member's update: only ciphertexts it cannot open, masked vectors that
look uniformly random, and, after the masked-input phase has closed, exactly the
shares needed to remove the masks from the sum (see ``federation.secagg``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from nacl import bindings
from nacl.signing import VerifyKey

from federation import shamir
from federation.errors import RefusalReason, SecAggAbort, SecAggError, UpdateRefused
from federation.secagg import (
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    MaskStreams,
    Phase,
    Ring,
    SecAggConfig,
    SecAggResult,
    UnmaskRequest,
    UnmaskResponse,
    check_roster,
    pair_seed,
    roster_index,
    self_seed,
    verify_advert,
)


@dataclass
class SecAggServer:
    """The aggregator's side of one round: routes shares, sums masked inputs, unmasks."""

    config: SecAggConfig
    members: Collection[str]
    verify_keys: Mapping[str, VerifyKey] | None = None
    phase: Phase = Phase.ADVERTISE
    _adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    _roster: tuple[KeyAdvert, ...] = ()
    _shares: dict[str, list[EncryptedShare]] = field(default_factory=dict)
    _shared: frozenset[str] = frozenset()
    _total: Ring | None = None
    _survivors: tuple[str, ...] = ()
    _dropped: tuple[str, ...] = ()
    _responses: dict[str, UnmaskResponse] = field(default_factory=dict)

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

    def unmask_request(self) -> UnmaskRequest:
        if self.phase.value < Phase.UNMASK.value:
            raise UpdateRefused(
                RefusalReason.WRONG_PHASE, "masked inputs are still being collected"
            )
        return UnmaskRequest(self._survivors, self._dropped)

    def receive_advert(self, advert: KeyAdvert) -> None:
        self._expect(Phase.ADVERTISE, advert.member, "key advert")
        if advert.member in self._adverts:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{advert.member} already advertised keys")
        if self.verify_keys is not None:
            verify_advert(advert, self.config, self.verify_keys)
        self._adverts[advert.member] = advert

    def close_adverts(self) -> tuple[KeyAdvert, ...]:
        """End step 1 (all arrived or deadline); the roster goes to every advertiser."""
        if self.phase is not Phase.ADVERTISE:
            raise SecAggError(f"cannot close adverts in phase {self.phase.name}")
        roster = tuple(self._adverts[m] for m in sorted(self._adverts))
        check_roster(roster, self.config, None)
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
        if len(self._shared) < self.config.threshold:
            raise SecAggAbort(
                f"{len(self._shared)} members shared keys, threshold {self.config.threshold}"
            )
        self.phase = Phase.MASKED_INPUT
        return self._shared

    def inbox(self, member: str) -> list[EncryptedShare]:
        """The shares addressed to ``member`` from members that completed step 2."""
        if self.phase.value < Phase.MASKED_INPUT.value or member not in self._shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} has no inbox in this round")
        return [s for s in self._shares.get(member, []) if s.sender in self._shared]

    def receive_masked(self, masked: MaskedInput) -> None:
        self._expect(Phase.MASKED_INPUT, masked.member, "masked input")
        if masked.member not in self._shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{masked.member} did not share keys")
        if masked.member in self._survivors:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{masked.member} already sent its input")
        vec = masked.vector
        if vec.dtype != np.uint32 or vec.shape != (self.config.vector_len,):
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"masked input of {masked.member} is {vec.dtype}{vec.shape}, "
                f"expected uint32({self.config.vector_len},)",
            )
        if self._total is None:
            self._total = vec.copy()
        else:
            self._total += vec
        self._survivors = (*self._survivors, masked.member)

    def close_masked(self) -> UnmaskRequest:
        """End step 3; what every survivor is asked to reveal."""
        if self.phase is not Phase.MASKED_INPUT:
            raise SecAggError(f"cannot close masked input in phase {self.phase.name}")
        if len(self._survivors) < self.config.threshold:
            raise SecAggAbort(
                f"{len(self._survivors)} masked inputs arrived, threshold {self.config.threshold}"
            )
        self._survivors = tuple(sorted(self._survivors))
        self._dropped = tuple(sorted(self._shared - set(self._survivors)))
        self.phase = Phase.UNMASK
        return UnmaskRequest(self._survivors, self._dropped)

    def receive_unmask(self, response: UnmaskResponse) -> None:
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
        self._responses[response.member] = response

    @property
    def responses(self) -> int:
        return len(self._responses)

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
            seed = self._rebuild(member, index, seeds=True)
            if hashlib.sha256(seed).digest() != adverts[member].seed_commitment:
                raise SecAggAbort(
                    f"shares of {member}'s self-mask seed do not match its commitment"
                )
            seeds.append((self_seed(seed, ctx), -1))
        for gone in self._dropped:
            secret = self._rebuild(gone, index, seeds=False)
            if bindings.crypto_scalarmult_base(secret) != adverts[gone].mask_pk:
                raise SecAggAbort(f"shares of {gone}'s mask key do not match its public key")
            for member in self._survivors:
                seed = pair_seed(secret, adverts[member].mask_pk, gone, member, ctx)
                seeds.append((seed, -1 if member < gone else 1))
        if total.size != length:
            raise SecAggError(f"masked sum has {total.size} elements, expected {length}")
        MaskStreams(seeds).apply_all(total)  # all masks removed in one blockwise pass
        self.phase = Phase.DONE
        return SecAggResult(self.config.quantizer.decode(total), self._survivors)

    def _rebuild(self, member: str, index: Mapping[str, int], *, seeds: bool) -> bytes:
        shares = []
        for responder, response in sorted(self._responses.items()):
            data = (response.seed_shares if seeds else response.key_shares)[member]
            shares.append(shamir.Share.from_bytes(index[responder], data))
        return shamir.combine(shares, self.config.threshold)
