"""What a JSON-RPC endpoint answers, checked before the node believes it: chain numbers,
batch answers and the contract's ``Anchored`` logs, each refused as a `ChainUnavailable`
naming the endpoint, and the records the client makes of them (`TxReceipt`,
`AnchoredEvent`, `OnChainRoot`).

Why its own room: the endpoint is often a third party's, and its numbers go where the
node keeps them. A receipt's ``blockNumber`` of ``0x`` and twenty ``f``, a ``lookup``
answering block 2**64-1 or a head beyond 2**63 raised SQLite's ``OverflowError`` in the
anchorer every pass while it reported the chain reachable; ``-0x5`` (``int`` reads a
sign) recorded a batch ANCHORED in block -5. A batch answer of ``5``, ``null`` or an
``id`` of ``[1]`` escaped as a ``TypeError``, a log whose data is too short as eth_abi's
``InsufficientDataBytes``. Every chain number is read by `chain_number`, every batch
answer by `batch_answers`, every ``Anchored`` log by `anchored_event`, the chain watch's
look at the endpoint (`qdspace.ledger.chain_watch`) by `chain_view`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from hexbytes import HexBytes
from web3 import Web3

from qdspace.ledger.errors import ChainUnavailable

#: the largest chain number (block, log index, timestamp, nonce, chain id) the node takes:
#: SQLite's INTEGER is a signed 64-bit number, and no chain comes near it
MAX_CHAIN_NUMBER = 2**63 - 1
#: a JSON-RPC quantity: ``0x`` and hex digits, no sign, no spaces, no underscores
_QUANTITY = re.compile(r"0x0*([0-9a-fA-F]{1,16})")
#: what web3 reads as a number (a sign included), to be refused by `chain_number` as it is
_SIGNED_HEX = re.compile(r"-?0x[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class OnChainRoot:
    """What the contract recorded for a root."""

    root: bytes
    leaf_count: int
    kind: int
    anchorer: str
    block_number: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AnchoredEvent:
    """One ``Anchored`` log: which root, by whom, in which transaction."""

    root: bytes
    kind: int
    leaf_count: int
    anchorer: str
    block_number: int
    timestamp: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class TxReceipt:
    """The mined outcome of a transaction, with the ``Anchored`` logs our contract emitted in it.

    The logs carry everything the contract stores for a root (count, kind, anchorer, block),
    so a proof is confirmed from this one receipt; the contract refuses a known root, so the
    log of a root is its only record.
    """

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    succeeded: bool
    anchored: tuple[AnchoredEvent, ...] = ()

    @property
    def anchored_roots(self) -> tuple[bytes, ...]:
        """The roots this transaction anchored."""
        return tuple(e.root for e in self.anchored)

    def event_for(self, root: bytes) -> AnchoredEvent | None:
        """The ``Anchored`` log of ``root`` in this transaction, if any."""
        return next((e for e in self.anchored if e.root == root), None)


@dataclass(frozen=True, slots=True)
class ChainView:
    """One look at the endpoint (`qdspace.ledger.client.LedgerClient.observe`): the chain id
    it serves, its head, and the hash of the block asked for (None: it has no such block,
    or none was asked for)."""

    chain_id: int
    head: int
    block_number: int | None = None
    block_hash: bytes | None = None


def chain_number(value: object, what: str, shown_url: str) -> int:
    """``value`` (a hex quantity as JSON-RPC writes it, or an int web3 or the ABI decoder
    already made of one) as a number in 0..`MAX_CHAIN_NUMBER`; ChainUnavailable otherwise."""
    number: int | None = None
    if isinstance(value, str):
        digits = _QUANTITY.fullmatch(value)
        number = None if digits is None else int(digits[1], 16)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not 0 <= number <= MAX_CHAIN_NUMBER:
        shown = hex(value) if isinstance(value, int) else repr(value)
        raise ChainUnavailable(
            f"chain at {shown_url} answered {what} {shown[:80]}, not a number in 0..2**63-1"
        )
    return number


def batch_answers(doc: object, count: int, shown_url: str) -> list[dict[str, Any]]:
    """The answers to a batch of `count` calls with ids ``0..count-1``, in call order:
    ``doc`` must be a list of one JSON object per call, each with its int ``id``."""
    if isinstance(doc, dict):  # a server that refuses batches answers one error object
        why = str(doc.get("error"))[:200]
        raise ChainUnavailable(f"chain at {shown_url} refused a batch: {why}")
    if not isinstance(doc, list) or not all(
        isinstance(a, dict) and type(a.get("id")) is int for a in doc
    ):
        raise ChainUnavailable(
            f"chain at {shown_url} answered a batch that is not a list of JSON-RPC answers"
        )
    by_id = {a["id"]: a for a in doc}
    if len(doc) != count or sorted(by_id) != list(range(count)):
        raise ChainUnavailable(f"chain at {shown_url} answered a batch incompletely")
    return [by_id[i] for i in range(count)]


def anchored_event(
    topics: list[bytes], data: bytes, tx_hash: bytes, entry: Any, shown_url: str
) -> AnchoredEvent:
    """The ``Anchored`` event of a log of the contract (its topics and data as bytes)."""
    try:
        count, block, ts = decode(["uint64", "uint64", "uint64"], data)
    except DecodingError as exc:
        raise ChainUnavailable(f"chain at {shown_url} answered a malformed log ({exc})") from None
    return AnchoredEvent(
        topics[1],
        int.from_bytes(topics[2], "big"),
        int(count),
        Web3.to_checksum_address(topics[3][12:]),
        chain_number(block, "the block of a log", shown_url),
        int(ts),
        tx_hash,
        chain_number(entry["logIndex"], "a log index", shown_url),
    )


def chain_view(
    answers: list[dict[str, Any]], block_number: int | None, shown_url: str
) -> ChainView:
    """The answers to ``eth_chainId``, ``eth_blockNumber`` and (with `block_number`)
    ``eth_getBlockByNumber`` as a `ChainView`. A block answered as an error or ``null`` is
    one the chain does not have (endpoints answer either for a block beyond their head);
    one of another number, or whose hash is no 32 bytes, is a ChainUnavailable."""
    for answer, what in zip(answers[:2], ("chain id", "a head block"), strict=True):
        if "error" in answer:
            why = str(answer["error"])[:200]
            raise ChainUnavailable(f"chain at {shown_url} answered no {what}: {why}")
    chain_id = chain_number(_as_web3_reads(answers[0].get("result")), "chain id", shown_url)
    head = chain_number(_as_web3_reads(answers[1].get("result")), "a head block", shown_url)
    if block_number is None:
        return ChainView(chain_id, head)
    block = answers[2].get("result")
    if "error" in answers[2] or block is None:
        return ChainView(chain_id, head, block_number)
    malformed = f"chain at {shown_url} answered a malformed block"
    if not isinstance(block, dict):
        raise ChainUnavailable(f"{malformed} (not an object)")
    if chain_number(block.get("number"), "a block number", shown_url) != block_number:
        raise ChainUnavailable(f"{malformed} (another number than block {block_number})")
    try:
        digest = bytes(HexBytes(block["hash"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainUnavailable(f"{malformed} ({type(exc).__name__})") from None
    if len(digest) != 32:
        raise ChainUnavailable(f"{malformed} (a hash of {len(digest)} bytes)")
    return ChainView(chain_id, head, block_number, digest)


def _as_web3_reads(value: object) -> object:
    """A hex quantity as the int web3 makes of it (so that a refusal reads as when web3 asked)."""
    if isinstance(value, str) and _SIGNED_HEX.fullmatch(value):
        return int(value, 16)
    return value
