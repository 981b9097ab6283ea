"""The quality data passport: a member's signed summary of what it anchored over a period.

Per kind: how many leaves and batches the member's chain account anchored in a block range,
and the latest root. The member signs it with its Ed25519 key; anyone with chain read access
recomputes the same summary from the contract's ``Anchored`` events of that account, so a
passport that leaves out, adds or alters a batch fails, as does any changed byte.

Anyone can sign a passport with their own key, so its period is bounded: blocks in
0..2**63-1, ``to_block`` not before ``from_block``, at most `MAX_PERIOD_BLOCKS` blocks (a
verifier reads the account's logs over the whole period, a page of blocks at a time: a
self-signed period of blocks 0..10**12 had the regulator's ``/verify``, the console's drop
zone and ``qdspace verify`` ask for 5*10**8 pages of logs, for hours). A block timestamp
no calendar holds is the chain's fault (`ChainUnavailable`), not the document's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from web3 import Web3

from qdspace.ledger.client import AnchoredEvent, LedgerClient
from qdspace.ledger.errors import ChainUnavailable, PassportFormatError
from qdspace.ledger.leaves import KIND_CODES, KIND_NAMES
from qdspace.ledger.proofs import Check, Verdict, describe, hex32, unhex
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.rpc_answers import MAX_CHAIN_NUMBER

PASSPORT_TYPE: Literal["qdspace.quality-data-passport"] = "qdspace.quality-data-passport"

Hash32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-f]{40}$")]
Kind = Literal[
    "inspection",
    "agreement",
    "deletion_receipt",
    "model_version",
    "record_batch",
    "quality_case",
    "trace_report",
]


#: the hex digits of a member id that come from its key (`node.member_ids.DIGEST_HEX`)
MEMBER_ID_DIGEST = 12
#: the most blocks a period may span: verifying it reads at most this many blocks of logs,
#: in 500 requests of `ledger.client.LOG_PAGE_BLOCKS` (4.6 months of Ethereum mainnet)
MAX_PERIOD_BLOCKS = 1_000_000


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class KindActivity(_Doc):
    """Anchored activity of one kind in the period."""

    leaves: int = Field(ge=1)
    batches: int = Field(ge=1)
    latest_root: Hash32
    latest_block: int = Field(ge=1)
    latest_tx: Hash32


class Period(_Doc):
    """Inclusive block range, with the timestamps of its end blocks (UTC, ISO 8601)."""

    from_block: int = Field(ge=0, le=MAX_CHAIN_NUMBER)
    to_block: int = Field(ge=0, le=MAX_CHAIN_NUMBER)
    from_time: str
    to_time: str

    @model_validator(mode="after")
    def _bounded(self) -> Period:
        problem = period_problem(self.from_block, self.to_block)
        if problem is not None:
            raise ValueError(problem)
        return self


def period_problem(from_block: int, to_block: int) -> str | None:
    """What is wrong with a period of blocks ``from_block..to_block``, if anything."""
    if to_block < from_block:
        return f"period.to_block {to_block} is before period.from_block {from_block}"
    if to_block - from_block >= MAX_PERIOD_BLOCKS:
        return (
            f"period.from_block..to_block spans {to_block - from_block + 1} blocks, over the "
            f"{MAX_PERIOD_BLOCKS} a passport may cover"
        )
    return None


class Passport(_Doc):
    """The passport document (``qdspace verify`` reads this too)."""

    type: Literal["qdspace.quality-data-passport"] = PASSPORT_TYPE
    version: Literal[1] = 1
    member_id: str = Field(min_length=1, max_length=200)
    verify_key: Hash32
    anchorer: Address
    chain_id: int = Field(ge=1)
    contract: Address
    period: Period
    activity: dict[Kind, KindActivity]
    issued_at: str
    signature: str = Field(pattern=r"^0x[0-9a-f]{128}$")

    def signed_bytes(self) -> bytes:
        """Canonical JSON of everything but the signature: what the signature covers."""
        body = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        """JSON text of the passport."""
        return self.model_dump_json(indent=2)

    @classmethod
    def parse(cls, data: str | bytes) -> Passport:
        """Parse a passport; PassportFormatError names the first offending field."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise PassportFormatError(f"malformed passport: {describe(exc)}") from None


def _iso(ts: int | None) -> str:
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        raise ChainUnavailable(
            f"the chain answered a block timestamp of {ts} s, a time no calendar holds"
        ) from None


def summarize(events: list[AnchoredEvent]) -> dict[Kind, KindActivity]:
    """Per-kind leaves, batches and latest root of a list of events in chain order."""
    out: dict[Kind, KindActivity] = {}
    for ev in events:
        name = KIND_NAMES.get(ev.kind)
        if name is None:
            continue
        kind: Kind = name  # type: ignore[assignment]
        prev = out.get(kind)
        out[kind] = KindActivity(
            leaves=(prev.leaves if prev else 0) + ev.leaf_count,
            batches=(prev.batches if prev else 0) + 1,
            latest_root=hex32(ev.root),
            latest_block=ev.block_number,
            latest_tx=hex32(ev.tx_hash),
        )
    return out


def issue_passport(
    queue: LeafQueue,
    client: LedgerClient,
    signing_key: SigningKey,
    member_id: str,
    anchorer: str,
    from_block: int | None = None,
    to_block: int | None = None,
) -> Passport:
    """Summarize the node's anchored batches in the block range and sign the summary
    (``to_block`` None: the chain's head; ``from_block`` None: the longest period a
    passport may cover, up to that block)."""
    last = client.latest_block() if to_block is None else to_block
    if from_block is None:
        from_block = max(0, last - MAX_PERIOD_BLOCKS + 1)
    problem = period_problem(from_block, last)
    if problem is not None:  # before the chain is asked more
        raise PassportFormatError(f"{problem}: ask for a shorter period (from_block, to_block)")
    events = [
        AnchoredEvent(
            b.root,
            KIND_CODES[b.kind],
            b.leaf_count,
            anchorer,
            b.block_number or 0,
            0,
            b.tx_hash or b"",
            0,
        )
        for b in queue.anchored_in_blocks(from_block, last)
        if (b.sender or anchorer).lower() == anchorer.lower()  # ours, not adopted
        and b.chain_id == client.chain_id
    ]
    events.sort(key=lambda e: (e.block_number, e.log_index))  # one sender: nonce order
    unsigned = {
        "member_id": member_id,
        "verify_key": hex32(bytes(signing_key.verify_key)),
        "anchorer": anchorer.lower(),
        "chain_id": client.chain_id,
        "contract": client.address.lower(),
        "period": Period(
            from_block=from_block,
            to_block=last,
            from_time=_iso(client.block_timestamp(from_block)),
            to_time=_iso(client.block_timestamp(last)),
        ),
        "activity": summarize(events),
        "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "signature": "0x" + "00" * 64,
    }
    draft = Passport(**unsigned)  # type: ignore[arg-type]
    signature = signing_key.sign(draft.signed_bytes()).signature
    return draft.model_copy(update={"signature": "0x" + signature.hex()})


def verify_passport(
    passport: Passport, client: LedgerClient | None, verify_key: bytes | None = None
) -> Verdict:
    """Check the signature, then recompute the summary from the chain's events."""
    checks: list[Check] = []
    if verify_key is not None:
        ok = verify_key == unhex(passport.verify_key)
        checks.append(
            Check(
                "signer",
                ok,
                "signed by the expected member key"
                if ok
                else "signed by another key than the one given",
            )
        )
    # a member id ends in 12 hex digits of its key's SHA-256 (`node.member_ids`): a
    # passport signed by one key but naming another member's id is nobody's word
    digest = hashlib.sha256(unhex(passport.verify_key)).hexdigest()[:MEMBER_ID_DIGEST]
    if passport.member_id.rpartition("-")[2] != digest:
        checks.append(
            Check(
                "member",
                False,
                f"member id {passport.member_id} is not the id of the key that signed it",
            )
        )
        return Verdict.of(checks)
    try:
        VerifyKey(unhex(passport.verify_key)).verify(
            passport.signed_bytes(), unhex(passport.signature)
        )
        checks.append(Check("signature", True, f"signed by member {passport.member_id}"))
    except (BadSignatureError, ValueError):
        checks.append(Check("signature", False, "the signature does not match the content"))
    if not all(c.ok for c in checks):
        return Verdict.of(checks)
    if client is None:
        checks.append(Check("chain", False, "no chain access given; activity unchecked"))
        return Verdict.of(checks)
    checks.extend(_chain_checks(passport, client))
    return Verdict.of(checks)


def _chain_checks(passport: Passport, client: LedgerClient) -> list[Check]:
    if client.chain_id != passport.chain_id:
        return [
            Check(
                "chain",
                False,
                f"passport is for chain {passport.chain_id}, the RPC "
                f"endpoint serves chain {client.chain_id}",
            )
        ]
    period = passport.period
    checks = []
    for name, block, claimed in (
        ("from_time", period.from_block, period.from_time),
        ("to_time", period.to_block, period.to_time),
    ):
        actual = _iso(client.block_timestamp(block))
        checks.append(
            Check(
                name,
                actual == claimed and bool(actual),
                f"block {block} at {actual or 'missing'}"
                + ("" if actual == claimed else f", passport says {claimed}"),
            )
        )
    events = client.anchored_by(
        Web3.to_checksum_address(passport.anchorer), period.from_block, period.to_block
    )
    onchain = summarize(events)
    for kind in sorted(set(onchain) | set(passport.activity)):
        got, want = onchain.get(kind), passport.activity.get(kind)
        ok = got == want
        checks.append(
            Check(
                f"activity.{kind}",
                ok,
                "matches the chain"
                if ok
                else f"chain has {_short(got)}, passport says {_short(want)}",
            )
        )
    if not onchain and not passport.activity:
        checks.append(Check("activity", True, "no anchoring in the period, as stated"))
    return checks


def _short(a: KindActivity | None) -> str:
    if a is None:
        return "nothing"
    return f"{a.leaves} leaves in {a.batches} batches, latest {a.latest_root[:12]}..."
