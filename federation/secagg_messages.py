"""What the parties of a secure-aggregation round send each other, and what members check.

The messages of the five steps of ``federation.secagg`` (key adverts, signed and
sealed Shamir shares, masked inputs, survivor confirmations, unmask requests and
responses), the bytes each signature covers, and the checks a member makes on what
the aggregator relays. The protocol runs in its *active* form: the aggregator (the
job's coordinator, often a member itself) may lie, so members check what it relays:

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
Two things the argument takes for granted are checked too: whose signature is the
coordinator's (the member refuses terms naming a coordinator other than the member it
talks to, `node.rpc.federation_client`: else the coordinator's own signature counted),
and that a member's pairwise masks are not all shared with the coordinator's side (a
member masks only with the keys of at least ``t`` others, `SecAggClient.masking`: a
coordinator relaying it only its own and one accomplice's shares knew every pairwise
secret it used, and unmasked it with the honest members' seed shares).

Everything here is plain data and pure checks: the transport maps the messages to
protobuf (``node.rpc.federation_serde``) and the member and aggregator state machines
(``federation.secagg``, ``federation.secagg_server``) decide when each check runs.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from qdspace.federation.errors import (
    InconsistentView,
    ProtocolMismatch,
    RosterRefused,
    SecAggAbort,
    SecAggError,
)
from qdspace.federation.params import Vector
from qdspace.federation.secagg_masks import DOMAIN, PROTOCOL, Quantizer, Ring, key_problem


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


@dataclass(frozen=True, slots=True)
class KeyAdvert:
    """Step 1: a member's public keys and self-mask commitment, signed by the member.

    ``certificate`` is the member's certificate (DER) as issued by the data space's
    authority; the transport turns it into the Ed25519 key that must verify
    ``signature`` (``federation`` itself never parses certificates). ``protocol`` names
    the wire protocol the member masks with (``secagg_masks.PROTOCOL``; empty from a v1
    member, which did not send it): an advert of another one is refused by name
    (``check_protocol``) before its signature, which covers ``DOMAIN``, is checked.
    """

    member: str
    cipher_pk: bytes
    mask_pk: bytes
    seed_commitment: bytes
    signature: bytes = b""
    certificate: bytes = b""
    protocol: str = PROTOCOL

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
    """Step 3: a member's masked, quantised update.

    ``owned``: the aggregator may keep and sum into ``vector``'s memory (the receiving
    node's own upload buffer, which nothing else refers to), instead of copying 50 MB.
    """

    member: str
    vector: Ring
    owned: bool = False


@dataclass(frozen=True, slots=True)
class MaskedPieces:
    """Step 3 as a stream delivered it: a member's masked input, little-endian uint32, in
    consecutive byte pieces of any length (a piece may end inside an element).

    The aggregator sums the pieces straight into the round's total, so a node never
    copies a received masked input into a buffer of its own first. The pieces are
    only read, and only once the whole input was received and checked.
    """

    member: str
    pieces: tuple[bytes | memoryview, ...]

    @property
    def nbytes(self) -> int:
        return sum(memoryview(p).nbytes for p in self.pieces)


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
    taken: set[bytes] = set()
    for advert in roster:
        check_advert_keys(advert, taken)
        taken |= {advert.mask_pk, advert.cipher_pk}
    for advert in roster:
        key = verify_keys.get(advert.member)
        if key is None:
            raise RosterRefused(
                f"roster names {advert.member}, whose certificate-bound key is not known"
            )
        verify_advert(advert, config, key)


def check_advert_keys(advert: KeyAdvert, taken: Collection[bytes] = ()) -> None:
    """Refuse ``advert`` if a key of it is malformed or of small order, its two keys are
    one, or a key repeats one of ``taken`` (another member's), naming the member.

    Each of these makes the round fail for everyone else (masks with a small-order or a
    repeated key do not pair up, a short key does not agree at all), so the coordinator
    refuses such an advert when it arrives, and a member such a roster.
    """
    for name, key in (("mask key", advert.mask_pk), ("cipher key", advert.cipher_pk)):
        problem = key_problem(key)
        if problem is not None:
            raise RosterRefused(f"key advert of {advert.member}: its {name} {problem}")
    if advert.mask_pk == advert.cipher_pk:
        raise RosterRefused(f"key advert of {advert.member}: its mask and cipher keys are one")
    if advert.mask_pk in taken or advert.cipher_pk in taken:
        raise RosterRefused(f"key advert of {advert.member} repeats another member's public key")


def protocol_mismatch(who: str, protocol: str) -> str | None:
    """Why ``who``, speaking ``protocol``, cannot take part in our rounds (``None``: it can)."""
    if protocol == PROTOCOL:
        return None
    named = repr(protocol[:64]) if protocol else "no protocol (a qdspace-secagg-v1 node)"
    return (
        f"{who} runs secure-aggregation protocol {named}, this node {PROTOCOL!r}: "
        "their masks would not cancel, so it cannot take part"
    )


def check_protocol(advert: KeyAdvert) -> None:
    """Refuse ``advert`` if it names another wire protocol than ours (``ProtocolMismatch``)."""
    problem = protocol_mismatch(f"the key advert of {advert.member}", advert.protocol)
    if problem is not None:
        raise ProtocolMismatch(problem)


def verify_advert(advert: KeyAdvert, config: SecAggConfig, key: VerifyKey) -> None:
    """Check ``advert`` is of our protocol and signed by ``key`` (its member's
    certificate-bound key)."""
    check_protocol(advert)
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
