"""Errors of the ledger room.

One base class so the node maps every ledger failure in one place; subclasses also derive
from the matching built-in where a caller might reasonably catch that instead.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises; its message is safe to show to a user."""


class ChainUnavailable(LedgerError, ConnectionError):
    """The JSON-RPC endpoint cannot be reached or did not answer; retrying later may work."""


class FeeAboveCap(ChainUnavailable):
    """The chain asks more for gas than this node's cap allows; retrying later may work
    (fees fall), raising the cap (``max_fee_gwei``) works now."""


class ChainSwapped(ChainUnavailable):
    """The endpoint now serves another chain than the one the node anchors to (another
    chain id, or a chain that lost the node's blocks): nothing is signed, sent or read
    there until ours answers again (`qdspace.ledger.chain_watch`); retrying later may work
    (the endpoint is put back), pointing ``rpc_url`` back at the chain works now."""


class WrongChain(LedgerError):
    """The endpoint serves another chain id, or the anchor contract is not at the address."""


class AlreadyAnchored(LedgerError):
    """The contract refused a root that is already anchored (a batch is never anchored twice)."""

    def __init__(self, root_hex: str) -> None:
        super().__init__(f"root {root_hex} is already anchored on chain")
        self.root_hex = root_hex


class TransactionFailed(LedgerError):
    """A transaction was mined but reverted, or no receipt arrived in time."""


class NonceConsumed(TransactionFailed):
    """The chain refused a signed transaction because its nonce was already used."""


class AccountKeyError(LedgerError, ValueError):
    """The account key file or environment variable is missing or not a valid private key."""


class NotAnchored(LedgerError, LookupError):
    """A leaf is known but its batch has not been anchored yet (a proof would be premature)."""


class UnknownLeaf(LedgerError, LookupError):
    """No leaf with this id or reference id was ever enqueued."""


class DocumentFormatError(LedgerError, ValueError):
    """A proof or passport document is malformed; the message names the offending field."""


class ProofFormatError(DocumentFormatError):
    """A proof document is malformed; the message names the offending field."""


class PassportFormatError(DocumentFormatError):
    """A passport document is malformed; the message names the offending field."""


class MerkleError(LedgerError, ValueError):
    """A Merkle tree or proof was asked for with impossible input (no leaves, bad hash size)."""


class LeafIndexError(LedgerError, IndexError):
    """A leaf index lies outside the tree it is asked about."""


class ArtifactError(LedgerError):
    """The compiled contract artifact is missing, corrupt or does not match its source."""
