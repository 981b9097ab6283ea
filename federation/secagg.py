"""Secure aggregation: the aggregator learns the sum of the members' updates, nothing else.

This is the protocol of Bonawitz et al. (CCS 2017) on the complete graph of members
(SecAgg+ with every member a neighbour) in its *active* form: the aggregator (the
job's coordinator, often a member itself) may lie, so members check what it relays
(signed adverts, signed shares, a signed consistency round; what each check is and
why together they stop a coordinator from unmasking one member's update is told in
``federation.secagg_messages``).

The steps:

1. **Advertise**: each member makes two X25519 key pairs (one to encrypt shares,
   one to agree pairwise masks) and a random self-mask seed ``b``; it sends the two
   public keys and ``SHA-256(b)``.
2. **Share keys**: each member Shamir-splits its mask secret key and ``b`` (any ``t``
   of ``n`` rebuild them) and sends one share pair to each other member, encrypted
   with NaCl ``Box`` under the cipher keys; the aggregator only routes ciphertexts.
3. **Masked input**: each member quantises its clipped update into Z_(2^32), adds
   ``PRG(b)`` and, for every other member ``v``, ``+/- PRG(X25519(s_u, s_v))`` (the
   pairwise masks cancel in the sum). A member whose inbox holds a share that does not
   open raises ``BadShares`` naming its dealer; its node reports the dealer to the
   aggregator instead (``SecAggServer.receive_report`` says what follows).
4. **Consistency**: the aggregator announces who survived (masked input arrived) and
   who dropped; each survivor signs that split.
5. **Unmask**: with the split and ``t`` signatures on it, the survivors reveal shares
   of ``b`` for survivors and shares of the mask secret key for those that dropped
   after sharing keys, so the aggregator can remove the masks they left behind. A
   member never reveals both kinds of share for the same peer.

The protocol is split by concern, so each piece can be read (and tested) alone:

- ``federation.secagg_masks``: the pure arithmetic: quantisation, mask seeds, the PRG;
- ``federation.shamir``: Shamir secret sharing over a prime field;
- ``federation.secagg_messages``: the messages, what each signature covers, and the
  checks members make on the aggregator;
- this module: one member's side, ``SecAggClient``, the state machine that holds the
  member's secrets and runs the five steps in order;
- ``federation.secagg_server``: the aggregator's side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from qdspace.federation import shamir
from qdspace.federation.chunks import DEFAULT_CHUNK_BYTES
from qdspace.federation.errors import (
    BadShares,
    InconsistentView,
    RosterRefused,
    SecAggAbort,
    SecAggError,
)
from qdspace.federation.params import Vector
from qdspace.federation.secagg_masks import (
    BLOCK,
    MaskStreams,
    Quantizer,
    Ring,
    pair_seed,
    self_seed,
)
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    Phase,
    SecAggConfig,
    ShareKind,
    SignedShare,
    UnmaskRequest,
    UnmaskResponse,
    check_roster,
    check_split,
    share_signed_bytes,
    split_signed_bytes,
    verify_share,
    vouchers,
)
from qdspace.util.json_depth import loads as bounded_json


def _seal_payload(
    config: SecAggConfig, sender: str, receiver: str, key: SignedShare, seed: SignedShare
) -> bytes:
    body = [
        config.job_id,
        config.round,
        config.attempt,
        sender,
        receiver,
        key.value.hex(),
        seed.value.hex(),
        key.signature.hex(),
        seed.signature.hex(),
    ]
    return json.dumps(body).encode()


class Masking:
    """One member's masked input, made a chunk at a time (the masks' streams run on from
    chunk to chunk, so the chunks joined are exactly what :meth:`SecAggClient.mask` makes).

    The update is read once and the masked vector written once, in cache-sized blocks.
    """

    def __init__(
        self, member: str, quantizer: Quantizer, streams: MaskStreams, vector: Vector
    ) -> None:
        self._member, self._quantizer, self._streams = member, quantizer, streams
        self._flat = np.asarray(vector, dtype=np.float32)
        self._out: Ring | None = None  # the whole masked input, unless made chunk by chunk
        self._done = 0

    @property
    def size(self) -> int:
        """Ring elements in the whole masked input."""
        return int(self._flat.size)

    def blocks(
        self, elements: int = DEFAULT_CHUNK_BYTES // 4, *, reuse_buffer: bool = False
    ) -> Iterator[Ring]:
        """The masked input in consecutive chunks of ``elements`` (views; masked once);
        one chunk goes on the wire as one message, so ``4 * elements`` bytes must fit in
        the receiver's chunk limit (``federation.chunks``).

        ``reuse_buffer``: every chunk is made in the same ``elements``-sized buffer, so a
        chunk is valid only until the next one is asked for (for a caller that copies
        each chunk out, as the upload does onto the wire): the 50 MB masked input is never
        held, its memory never touched (no page faults, the chunk stays in cache until it
        is sent), and ``result`` is not available."""
        if self._done or self._out is not None:
            raise SecAggError(f"member {self.member}: the masked input was already made")
        size = self.size
        scratch = np.empty(BLOCK, dtype=np.float32)
        flat = self._flat
        if reuse_buffer:
            chunk: Ring = np.empty(min(elements, size), dtype=np.uint32)
        else:
            whole: Ring = np.empty(size, dtype=np.uint32)
            self._out = whole
        for start in range(0, size, elements):
            end = min(start + elements, size)
            out = chunk[: end - start] if reuse_buffer else whole[start:end]
            for lo in range(0, end - start, BLOCK):
                hi = min(lo + BLOCK, end - start)
                self._quantizer.encode_into(flat[start + lo : start + hi], out[lo:hi], scratch)
                self._streams.apply(out[lo:hi])
            self._done = end
            yield out

    @property
    def member(self) -> str:
        return self._member

    @property
    def result(self) -> MaskedInput:
        """The whole masked input, once every chunk was made."""
        if self._out is None or self._done != self._out.size:
            raise SecAggError(
                f"member {self.member}: the masked input is not complete (or was made "
                "chunk by chunk in a reused buffer)"
            )
        return MaskedInput(self._member, self._out)


@dataclass
class SecAggClient:
    """One member's side of one round; call the five steps in order."""

    member: str
    config: SecAggConfig
    signing_key: SigningKey
    _cipher_sk: PrivateKey = field(default_factory=PrivateKey.generate, repr=False)
    _mask_sk: PrivateKey = field(default_factory=PrivateKey.generate, repr=False)
    _seed: bytes = field(default_factory=lambda: bytes(PrivateKey.generate()), repr=False)
    _phase: Phase = Phase.ADVERTISE
    _advert: KeyAdvert | None = None
    _roster: tuple[KeyAdvert, ...] = ()
    _keys: Mapping[str, VerifyKey] = field(default_factory=dict, repr=False)
    #: dealer -> (its mask-key share for us, its seed share for us)
    _received: dict[str, tuple[SignedShare, SignedShare]] = field(default_factory=dict, repr=False)
    _signed_split: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def _step(self, expected: Phase, following: Phase) -> None:
        if self._phase is not expected:
            raise SecAggError(
                f"member {self.member}: step {expected.name} called in phase {self._phase.name}"
            )
        self._phase = following

    def _sign_share(self, holder: str, kind: ShareKind, share: shamir.Share) -> SignedShare:
        value = share.to_bytes()
        body = share_signed_bytes(self.config.context, self.member, holder, kind, value)
        return SignedShare(value, self.signing_key.sign(body).signature)

    def advertise(self, certificate: bytes = b"") -> KeyAdvert:
        """Step 1; ``certificate`` is this member's certificate for the others to check."""
        self._step(Phase.ADVERTISE, Phase.SHARE_KEYS)
        advert = KeyAdvert(
            self.member,
            bytes(self._cipher_sk.public_key),
            bytes(self._mask_sk.public_key),
            hashlib.sha256(self._seed).digest(),
            certificate=certificate,
        )
        signature = self.signing_key.sign(advert.signed_bytes(self.config.context)).signature
        self._advert = replace(advert, signature=signature)
        return self._advert

    def share_keys(
        self, roster: Sequence[KeyAdvert], verify_keys: Mapping[str, VerifyKey]
    ) -> list[EncryptedShare]:
        """Step 2: check every advert against its member's certificate-bound key, then
        deal signed shares of our two secrets, one sealed box per other member."""
        self._step(Phase.SHARE_KEYS, Phase.MASKED_INPUT)
        check_roster(roster, self.config, verify_keys)
        own = next((a for a in roster if a.member == self.member), None)
        mine = self._advert
        if (
            own is None
            or mine is None
            or (own.cipher_pk, own.mask_pk, own.seed_commitment)
            != (
                mine.cipher_pk,
                mine.mask_pk,
                mine.seed_commitment,
            )
        ):
            raise RosterRefused(f"roster does not carry member {self.member}'s own keys")
        self._roster, self._keys = tuple(roster), dict(verify_keys)
        n, t = len(roster), self.config.threshold
        key_shares = shamir.split(bytes(self._mask_sk), n, t)
        seed_shares = shamir.split(self._seed, n, t)
        out = []
        for advert, ks, ss in zip(roster, key_shares, seed_shares, strict=True):
            holder = advert.member
            key = self._sign_share(holder, ShareKind.KEY, ks)
            seed = self._sign_share(holder, ShareKind.SEED, ss)
            if holder == self.member:
                self._received[self.member] = (key, seed)
                continue
            payload = _seal_payload(self.config, self.member, holder, key, seed)
            box = Box(self._cipher_sk, PublicKey(advert.cipher_pk))
            out.append(EncryptedShare(self.member, holder, bytes(box.encrypt(payload))))
        return out

    def _open(self, share: EncryptedShare, adverts: Mapping[str, KeyAdvert]) -> None:
        sender = adverts.get(share.sender)
        if share.receiver != self.member or sender is None or share.sender == self.member:
            raise SecAggError(f"share from {share.sender} to {share.receiver} is not for us")
        if share.sender in self._received:
            raise SecAggError(f"a second share from {share.sender}")
        try:
            plain = Box(self._cipher_sk, PublicKey(sender.cipher_pk)).decrypt(share.ciphertext)
            job, rnd, attempt, frm, to, key_hex, seed_hex, key_sig, seed_sig = bounded_json(plain)
            key = SignedShare(bytes.fromhex(key_hex), bytes.fromhex(key_sig))
            seed = SignedShare(bytes.fromhex(seed_hex), bytes.fromhex(seed_sig))
        except (CryptoError, ValueError, TypeError) as exc:
            raise BadShares(share.sender, f"its share for {self.member} does not decrypt") from exc
        cfg = self.config
        if [job, rnd, attempt, frm, to] != [
            cfg.job_id,
            cfg.round,
            cfg.attempt,
            sender.member,
            self.member,
        ]:
            raise BadShares(share.sender, "its share was made for another round or member")
        dealer_key = self._keys[share.sender]
        for signed, kind in ((key, ShareKind.KEY), (seed, ShareKind.SEED)):
            if not verify_share(signed, cfg.context, share.sender, self.member, kind, dealer_key):
                raise BadShares(share.sender, f"its {kind.value} share is not signed by it")
            try:
                shamir.Share.from_bytes(1, signed.value)
            except SecAggError as exc:
                raise BadShares(share.sender, f"its {kind.value} share: {exc}") from exc
        self._received[share.sender] = (key, seed)

    def mask(self, vector: Vector, inbox: Sequence[EncryptedShare]) -> MaskedInput:
        """Step 3: quantise ``vector`` (already clipped to the job's bound), add all masks."""
        masking = self.masking(vector, inbox)
        for _ in masking.blocks():
            pass
        return masking.result

    def masking(self, vector: Vector, inbox: Sequence[EncryptedShare]) -> Masking:
        """Step 3, streamed: check the inbox and derive the mask seeds now, then mask the
        vector a chunk at a time (:meth:`Masking.blocks`), so that a member can send
        each chunk while it masks the next one instead of masking 50 MB first."""
        self._step(Phase.MASKED_INPUT, Phase.CONSISTENCY)
        if vector.shape != (self.config.vector_len,):
            raise SecAggError(
                f"member {self.member}: vector shape {vector.shape}, "
                f"round expects ({self.config.vector_len},)"
            )
        adverts = {a.member: a for a in self._roster}
        for share in inbox:
            self._open(share, adverts)
        # our pairwise masks hide our update only if one of the peers we mask with is honest:
        # a coordinator that relays us the shares of itself and one accomplice only (our
        # own share made the count) would know every pairwise secret we use. At least t
        # peers besides us, where t > c + 1, always include one beyond the coordinator and
        # the c members it may collude with.
        peers = len(self._received.keys() - {self.member})
        if peers < self.config.threshold:
            raise SecAggAbort(
                f"only {peers} other members shared keys with {self.member}, threshold "
                f"{self.config.threshold}"
            )
        ctx = self.config.context
        secret = bytes(self._mask_sk)
        seeds = [(self_seed(self._seed, ctx), 1)]
        for peer in sorted(self._received):
            if peer == self.member:
                continue
            seed = pair_seed(secret, adverts[peer].mask_pk, self.member, peer, ctx)
            seeds.append((seed, 1 if self.member < peer else -1))
        return Masking(self.member, self.config.quantizer, MaskStreams(seeds), vector)

    def confirm(self, request: UnmaskRequest) -> Confirmation:
        """Step 4: sign the survivor/dropped split we were shown (once per round)."""
        self._step(Phase.CONSISTENCY, Phase.UNMASK)
        check_split(request, self.config, self._received, self.member)
        survivors, dropped = tuple(sorted(request.survivors)), tuple(sorted(request.dropped))
        self._signed_split = (survivors, dropped)
        body = split_signed_bytes(self.config.context, survivors, dropped)
        return Confirmation(self.member, self.signing_key.sign(body).signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 5: reveal seed shares of survivors and key shares of dropped members, never
        both, and only for the split we signed and ``t`` other survivors signed too."""
        self._step(Phase.UNMASK, Phase.DONE)
        split = (tuple(sorted(request.survivors)), tuple(sorted(request.dropped)))
        if split != self._signed_split:
            raise InconsistentView(
                f"member {self.member}: asked to unmask for survivors {list(split[0])}, "
                f"but signed survivors {list(self._signed_split[0]) if self._signed_split else []}"
            )
        check_split(request, self.config, self._received, self.member)
        good = vouchers(request, self.config, self._keys)
        if len(good) < self.config.threshold:
            raise InconsistentView(
                f"member {self.member}: only {len(good)} survivors other than the coordinator "
                f"signed this split ({good}), threshold {self.config.threshold}"
            )
        seed = {m: self._received[m][1] for m in split[0]}
        key = {m: self._received[m][0] for m in split[1]}
        return UnmaskResponse(self.member, seed, key)
