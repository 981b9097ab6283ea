"""Secure aggregation: the aggregator learns the sum of the members' updates, nothing else.

This is the protocol of Bonawitz et al. (CCS 2017) on the complete graph of members
(SecAgg+ with every member a neighbour) in its *active* form: the aggregator (the job's
coordinator, often a member itself) may lie, so members check what it relays:

- every key advert is Ed25519-signed by its member and carries that member's
  certificate; a member refuses a roster whose adverts are unsigned, badly signed, or
  signed by a key other than the one its certificate binds to the member's name (so the
  coordinator cannot swap in keys of its own and open shares);
- every Shamir share is signed by the member that dealt it, for the member that holds
  it, so a share that does not verify names whoever presented it, and signed shares
  that do not rebuild the committed secret name their dealer (``BadShares``);
- a signed consistency round (Bell et al. 2020 / SecAgg+ "ConsistencyCheck") sits
  between masked input and unmasking: each survivor signs the survivor/dropped split it
  was asked to unmask for, and a member reveals nothing unless the request it gets
  carries valid signatures on *that same* split from at least ``t`` survivors other
  than the coordinator.

Why this stops a coordinator from learning one member's update: to remove member X's
masks it needs ``t`` shares of X's self-mask seed (X "survived") *and* ``t`` shares of
X's mask key (X "dropped"). Honest members sign one split per round and reveal only
for a split ``t`` non-coordinator members signed; two different splits would need two
sets of ``t`` honest signers, which cannot be disjoint when ``t > n/2`` (enforced by
``federation.job``). So all honest members reveal for the same split, never both kinds
of share of one member, and the coordinator's own single share cannot make up ``t``.
With ``c`` members colluding with the coordinator the same argument needs
``2t >= n + c`` and ``t > c + 1``; the job's ``t`` bounds how much collusion it covers.

The steps:

1. **Advertise**: each member makes two X25519 key pairs (one to encrypt shares,
   one to agree pairwise masks) and a random self-mask seed ``b``; it sends the two
   public keys and ``SHA-256(b)``.
2. **Share keys**: each member Shamir-splits its mask secret key and ``b`` (any ``t``
   of ``n`` rebuild them) and sends one share pair to each other member, encrypted
   with NaCl ``Box`` under the cipher keys; the aggregator only routes ciphertexts.
3. **Masked input**: each member quantises its clipped update into Z_(2^32), adds
   ``PRG(b)`` and, for every other member ``v``, ``+/- PRG(X25519(s_u, s_v))`` (the
   pairwise masks cancel in the sum).
4. **Consistency**: the aggregator announces who survived (masked input arrived) and
   who dropped; each survivor signs that split.
5. **Unmask**: with the split and ``t`` signatures on it, the survivors reveal shares
   of ``b`` for survivors and shares of the mask secret key for those that dropped
   after sharing keys, so the aggregator can remove the masks they left behind. A
   member never reveals both kinds of share for the same peer.

PRG output is ChaCha20 keystream (``cryptography``) keyed by HKDF-SHA256 of the secret
and bound to the job and round, so masks never repeat across rounds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey
from numpy.typing import NDArray

from qdspace.federation import shamir
from qdspace.federation.errors import (
    BadShares,
    InconsistentView,
    RosterRefused,
    SecAggAbort,
    SecAggError,
)
from qdspace.federation.params import Vector

DOMAIN = b"qdspace-secagg-v1"
Ring = NDArray[np.uint32]
_ZERO_NONCE = bytes(16)
#: Ring elements per block when masking (1 MiB: the masks are made in cache).
BLOCK = 1 << 18


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Signed fixed point in Z_(2^32) with a power-of-two scale, so encoding is exact.

    Each coordinate is clipped to ``[-clip, clip]`` (members clip the update's L2 norm
    to ``clip`` first, which bounds every coordinate too) and the scale leaves room for
    the sum of ``max_members`` such values without wrapping. The rounding error of the
    decoded sum is at most ``members * 0.5 / scale`` per coordinate.
    """

    clip: float
    max_members: int

    def __post_init__(self) -> None:
        if not self.clip > 0 or self.max_members < 1:
            raise SecAggError(f"quantizer needs clip > 0 and max_members >= 1, got {self}")

    @property
    def scale(self) -> float:
        # 2^30 rather than 2^31 - 1 leaves a bit of headroom for float32 rounding of ``clip``.
        return float(2.0 ** math.floor(math.log2(2**30 / (self.max_members * self.clip))))

    def max_error(self, members: int) -> float:
        """Largest rounding error per coordinate of a decoded sum of ``members`` inputs."""
        return members * 0.5 / self.scale

    def encode(self, vector: Vector) -> Ring:
        flat = np.asarray(vector, dtype=np.float32)
        out: Ring = np.empty(flat.shape, dtype=np.uint32)
        for start in range(0, flat.size, BLOCK):
            self.encode_into(flat[start : start + BLOCK], out[start : start + BLOCK])
        return out

    def encode_into(
        self, vector: Vector, out: Ring, scratch: NDArray[np.float32] | None = None
    ) -> None:
        """``encode`` of one block into ``out`` (``scratch``: a float32 buffer to reuse)."""
        scale = np.float32(self.scale)
        bound = np.float32(self.clip) * scale
        tmp = np.empty(vector.shape, np.float32) if scratch is None else scratch[: vector.size]
        np.multiply(vector, scale, out=tmp)
        np.clip(tmp, -bound, bound, out=tmp)
        np.rint(tmp, out=out.view(np.int32), casting="unsafe")

    def decode(self, total: Ring) -> Vector:
        # int32 -> float32 rounds once; multiplying by a power of two is then exact.
        signed = np.asarray(total, dtype=np.uint32).view(np.int32)
        decoded: Vector = signed.astype(np.float32)
        np.multiply(decoded, np.float32(1.0 / self.scale), out=decoded)
        return decoded


@dataclass(frozen=True, slots=True)
class SecAggConfig:
    """What every party of one round agrees on before it starts."""

    job_id: str
    round: int
    threshold: int
    vector_len: int
    quantizer: Quantizer
    attempt: int = 1
    #: The aggregator's own member name when it also takes part ("" when it does not):
    #: its consistency signature never counts towards the threshold (see ``vouchers``).
    coordinator: str = ""

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise SecAggError(f"secure aggregation needs a threshold >= 2, got {self.threshold}")

    @property
    def context(self) -> bytes:
        return json.dumps([self.job_id, self.round, self.attempt, self.vector_len]).encode()


class Prg:
    """Expands 32-byte seeds into ring vectors (ChaCha20 keystream), reusing its buffers.

    A round expands several 50 MB masks; allocating fresh buffers for each costs more
    than the cipher, so one ``Prg`` keeps one output buffer and all share one
    read-only zero input per length. The array ``expand`` returns is overwritten by
    the next call: use it before that.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self._zeros = _zeros(4 * length)
        self._out = np.empty(4 * length + 64, dtype=np.uint8)  # update_into wants a spare block

    def expand(self, seed: bytes) -> Ring:
        encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
        written = encryptor.update_into(self._zeros, self._out.data)
        out: Ring = np.frombuffer(self._out, dtype="<u4", count=written // 4)
        return out


_ZEROS: list[bytes] = []


def _zeros(size: int) -> bytes:
    """A shared read-only buffer of ``size`` zero bytes (the last size asked for is kept)."""
    cached = _ZEROS[0] if _ZEROS else b""
    if len(cached) != size:
        cached = bytes(size)
        _ZEROS[:] = [cached]
    return cached


class MaskStreams:
    """Adds (or subtracts) the PRG expansions of several seeds to a ring vector, block by block.

    Each seed's ChaCha20 stream continues from block to block, so the result equals
    adding whole ``expand(seed, n)`` vectors; working in cache-sized blocks means the
    masks never exist as 50 MB arrays and the vector is read and written once.
    """

    def __init__(self, seeds: Sequence[tuple[bytes, int]]) -> None:
        for _, sign in seeds:
            if sign not in (1, -1):
                raise SecAggError(f"mask sign must be +1 or -1, got {sign}")
        self._streams = [
            (Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor(), sign)
            for seed, sign in seeds
        ]
        self._zeros = memoryview(bytes(4 * BLOCK))
        self._out = np.empty(4 * BLOCK + 64, dtype=np.uint8)

    def apply(self, part: Ring) -> None:
        """Mask the next ``len(part)`` (at most ``BLOCK``) elements of the vector in place."""
        size = 4 * part.size
        for encryptor, sign in self._streams:
            written = encryptor.update_into(self._zeros[:size], self._out.data)
            mask = np.frombuffer(self._out, dtype="<u4", count=written // 4)
            if sign > 0:
                np.add(part, mask, out=part)
            else:
                np.subtract(part, mask, out=part)

    def apply_all(self, vector: Ring) -> None:
        for start in range(0, vector.size, BLOCK):
            self.apply(vector[start : start + BLOCK])


def expand(seed: bytes, length: int) -> Ring:
    """``length`` pseudo-random ring elements: ChaCha20 keystream under a 32-byte seed."""
    return Prg(length).expand(seed).copy()


def _derive(secret: bytes, label: bytes, context: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DOMAIN + label + context)
    return hkdf.derive(secret)


def _agree(secret_key: bytes, public_key: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult(secret_key, public_key)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SecAggError("X25519 key agreement failed (invalid or low-order key)") from exc


def pair_seed(secret_key: bytes, peer_public: bytes, a: str, b: str, context: bytes) -> bytes:
    """The pairwise mask seed of members ``a`` and ``b``; both derive the same one."""
    low, high = sorted((a, b))
    pair = json.dumps([low, high]).encode()
    return _derive(_agree(secret_key, peer_public), b"pair", context + pair)


def self_seed(seed: bytes, context: bytes) -> bytes:
    return _derive(seed, b"self", context)


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyAdvert:
    """Step 1: a member's public keys and self-mask commitment, signed by the member.

    ``certificate`` is the member's certificate (DER) as issued by the data space's
    authority; the transport turns it into the Ed25519 key that must verify
    ``signature`` (``federation`` itself never parses certificates).
    """

    member: str
    cipher_pk: bytes
    mask_pk: bytes
    seed_commitment: bytes
    signature: bytes = b""
    certificate: bytes = b""

    def signed_bytes(self, context: bytes) -> bytes:
        body = [self.member, self.cipher_pk.hex(), self.mask_pk.hex(), self.seed_commitment.hex()]
        return DOMAIN + b"advert" + context + json.dumps(body).encode()


class ShareKind(Enum):
    KEY = "key"
    SEED = "seed"


@dataclass(frozen=True, slots=True)
class SignedShare:
    """One Shamir share (``shamir.SHARE_BYTES``) and its dealer's signature over it."""

    value: bytes
    signature: bytes


def share_signed_bytes(
    context: bytes, dealer: str, holder: str, kind: ShareKind, value: bytes
) -> bytes:
    """What a dealer signs for each share: round, dealer, holder, kind and value."""
    body = [dealer, holder, kind.value, value.hex()]
    return DOMAIN + b"share" + context + json.dumps(body).encode()


def verify_share(
    share: SignedShare,
    context: bytes,
    dealer: str,
    holder: str,
    kind: ShareKind,
    key: VerifyKey,
) -> bool:
    """Whether ``dealer`` signed ``share`` as the ``kind`` share it dealt to ``holder``."""
    try:
        key.verify(share_signed_bytes(context, dealer, holder, kind, share.value), share.signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """Step 2: shares of ``sender``'s secrets for ``receiver``, sealed so only it can read."""

    sender: str
    receiver: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Step 3: a member's masked, quantised update."""

    member: str
    vector: Ring


@dataclass(frozen=True, slots=True)
class Confirmation:
    """Step 4: a survivor's signature on the survivor/dropped split it was shown."""

    member: str
    signature: bytes


def split_signed_bytes(context: bytes, survivors: Sequence[str], dropped: Sequence[str]) -> bytes:
    """What a survivor signs in the consistency round."""
    body = [sorted(survivors), sorted(dropped)]
    return DOMAIN + b"survivors" + context + json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Steps 4 and 5 (aggregator to members): whose input arrived, who dropped after sharing
    keys, and (for unmasking) the survivors' signatures on exactly this split."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    confirmations: tuple[Confirmation, ...] = ()


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Step 5 (member to aggregator): seed shares of survivors, key shares of dropped members,
    each as its dealer signed it."""

    member: str
    seed_shares: Mapping[str, SignedShare]
    key_shares: Mapping[str, SignedShare]


@dataclass(frozen=True, slots=True)
class SecAggResult:
    """The unmasked sum and the members it is the sum of."""

    total: Vector
    members: tuple[str, ...]

    @property
    def mean(self) -> Vector:
        return (self.total / np.float32(len(self.members))).astype(np.float32)


class Phase(Enum):
    ADVERTISE = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5
    DONE = 6


def roster_index(roster: Sequence[KeyAdvert]) -> dict[str, int]:
    return {a.member: i + 1 for i, a in enumerate(roster)}


def check_roster(
    roster: Sequence[KeyAdvert], config: SecAggConfig, verify_keys: Mapping[str, VerifyKey]
) -> None:
    """Refuse a roster that is malformed, too small, or has an advert its member did not sign."""
    members = [a.member for a in roster]
    if members != sorted(set(members)):
        raise RosterRefused("roster must list each member once, sorted by member id")
    if len(members) < config.threshold:
        raise SecAggAbort(
            f"{len(members)} members advertised keys, threshold is {config.threshold}"
        )
    keys = [a.mask_pk for a in roster] + [a.cipher_pk for a in roster]
    if len(set(keys)) != len(keys) or any(len(k) != 32 for k in keys):
        raise RosterRefused("roster has repeated or malformed public keys")
    for advert in roster:
        key = verify_keys.get(advert.member)
        if key is None:
            raise RosterRefused(
                f"roster names {advert.member}, whose certificate-bound key is not known"
            )
        verify_advert(advert, config, key)


def verify_advert(advert: KeyAdvert, config: SecAggConfig, key: VerifyKey) -> None:
    """Check ``advert`` is signed by ``key`` (its member's certificate-bound key)."""
    if not advert.signature:
        raise RosterRefused(f"key advert of {advert.member} is not signed")
    try:
        key.verify(advert.signed_bytes(config.context), advert.signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise RosterRefused(
            f"key advert of {advert.member} is not signed by {advert.member}'s "
            "certificate-bound key"
        ) from exc


def vouchers(
    request: UnmaskRequest, config: SecAggConfig, verify_keys: Mapping[str, VerifyKey]
) -> list[str]:
    """The survivors other than the coordinator whose signature on ``request``'s split verifies.

    The coordinator's own signature is not counted: it is the party the consistency
    round guards against, and it could sign two different splits.
    """
    body = split_signed_bytes(config.context, request.survivors, request.dropped)
    good = set()
    for confirmation in request.confirmations:
        member = confirmation.member
        if member not in request.survivors or member == config.coordinator:
            continue
        key = verify_keys.get(member)
        if key is None:
            continue
        try:
            key.verify(body, confirmation.signature)
        except (BadSignatureError, ValueError, TypeError):
            continue
        good.add(member)
    return sorted(good)


def check_split(
    request: UnmaskRequest, config: SecAggConfig, shared: Collection[str], member: str
) -> None:
    """Refuse a survivor/dropped split that is not a partition of who shared keys."""
    survivors, dropped = set(request.survivors), set(request.dropped)
    if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
        raise InconsistentView(f"member {member}: the split names a member twice")
    if survivors & dropped or survivors | dropped != set(shared):
        raise InconsistentView(
            f"member {member}: unmask request does not split the members that "
            f"shared keys ({sorted(shared)}) into survivors and dropped"
        )
    if member not in survivors or len(survivors) < config.threshold:
        raise InconsistentView(
            f"member {member}: unmask request has too few survivors or leaves us out"
        )


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


# --- member side -----------------------------------------------------------------------


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
            job, rnd, attempt, frm, to, key_hex, seed_hex, key_sig, seed_sig = json.loads(plain)
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
        self._step(Phase.MASKED_INPUT, Phase.CONSISTENCY)
        if vector.shape != (self.config.vector_len,):
            raise SecAggError(
                f"member {self.member}: vector shape {vector.shape}, "
                f"round expects ({self.config.vector_len},)"
            )
        adverts = {a.member: a for a in self._roster}
        for share in inbox:
            self._open(share, adverts)
        if len(self._received) < self.config.threshold:
            raise SecAggAbort(
                f"only {len(self._received)} members shared keys, threshold {self.config.threshold}"
            )
        ctx = self.config.context
        secret = bytes(self._mask_sk)
        seeds = [(self_seed(self._seed, ctx), 1)]
        for peer in sorted(self._received):
            if peer == self.member:
                continue
            seed = pair_seed(secret, adverts[peer].mask_pk, self.member, peer, ctx)
            seeds.append((seed, 1 if self.member < peer else -1))
        # quantise and mask block by block: the update is read once, the result written once
        quantizer, streams = self.config.quantizer, MaskStreams(seeds)
        y: Ring = np.empty(self.config.vector_len, dtype=np.uint32)
        scratch = np.empty(BLOCK, dtype=np.float32)
        flat = np.asarray(vector, dtype=np.float32)
        for start in range(0, y.size, BLOCK):
            part = y[start : start + BLOCK]
            quantizer.encode_into(flat[start : start + BLOCK], part, scratch)
            streams.apply(part)
        return MaskedInput(self.member, y)

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
