"""Deploying the anchor contract and funding accounts on a dev chain.

``deploy_anchor`` works on any chain with a funded signer. ``fund_from_dev_account`` uses the
unlocked, pre-funded accounts that dev chains (the embedded one, Hardhat, ganache) offer
through ``eth_sendTransaction``; production chains have none and refuse it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.exceptions import TransactionNotFound

from qdspace.ledger.artifact import load_artifact
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ChainUnavailable, LedgerError, TransactionFailed
from qdspace.ledger.keys import ChainSigner
from qdspace.util.redact import redact_url

DEPLOY_GAS = 1_000_000
RECEIPT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the anchor contract lives; what a node needs besides the RPC URL."""

    address: str
    chain_id: int
    block_number: int
    tx_hash: str

    def to_json(self) -> str:
        """JSON text of this record."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: Path) -> Deployment:
        """Load a deployment record (``anchor.json`` of the embedded chain has this shape)."""
        try:
            doc = json.loads(path.read_text())
            return cls(
                str(doc["address"]),
                int(doc["chain_id"]),
                int(doc["block_number"]),
                str(doc["tx_hash"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{path}: not a deployment record ({exc})") from None


def _web3(rpc_url: str) -> Web3:
    return LedgerClient(rpc_url, "0x" + "00" * 20).w3


def _wait_receipt(w3: Web3, tx_hash: bytes, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            if time.monotonic() > deadline:
                msg = f"no receipt for 0x{tx_hash.hex()} after {timeout_s}s"
                raise TransactionFailed(msg) from None
            time.sleep(0.1)


def deploy_anchor(
    rpc_url: str, signer: ChainSigner, *, timeout_s: float = RECEIPT_TIMEOUT_S
) -> Deployment:
    """Deploy the committed anchor contract bytecode from ``signer``'s account."""
    w3 = _web3(rpc_url)
    try:
        chain_id = int(w3.eth.chain_id)
        tx: dict[str, Any] = {
            "data": load_artifact().bytecode,
            "value": 0,
            "gas": DEPLOY_GAS,
            "nonce": w3.eth.get_transaction_count(signer.address, "pending"),  # type: ignore[arg-type]
            "chainId": chain_id,
        }
        block = w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            tx["gasPrice"] = int(w3.eth.gas_price)
        else:
            tip = int(w3.eth.max_priority_fee)
            tx.update(maxFeePerGas=2 * int(base) + tip, maxPriorityFeePerGas=tip)
        signed = signer.sign(tx)
        tx_hash = bytes(w3.eth.send_raw_transaction(signed.raw_transaction))
        receipt = _wait_receipt(w3, tx_hash, timeout_s)
    except OSError as exc:
        raise ChainUnavailable(  # the error text repeats the URL (its key)
            f"chain at {redact_url(rpc_url)} is unreachable ({type(exc).__name__})"
        ) from None
    if int(receipt["status"]) != 1 or not receipt["contractAddress"]:
        raise TransactionFailed(f"deploying the anchor contract failed in tx 0x{tx_hash.hex()}")
    return Deployment(
        Web3.to_checksum_address(receipt["contractAddress"]),
        chain_id,
        int(receipt["blockNumber"]),
        "0x" + tx_hash.hex(),
    )


def fund_from_dev_account(
    rpc_url: str, address: str, wei: int, *, timeout_s: float = RECEIPT_TIMEOUT_S
) -> None:
    """Send ``wei`` to ``address`` from the dev chain's first unlocked account."""
    w3 = _web3(rpc_url)
    try:
        accounts = w3.eth.accounts
        if not accounts:
            raise LedgerError(
                f"chain at {redact_url(rpc_url)} has no unlocked dev account to fund from"
            )
        tx_hash = w3.eth.send_transaction(
            {"from": accounts[0], "to": Web3.to_checksum_address(address), "value": wei}  # type: ignore[typeddict-item]
        )
        receipt = _wait_receipt(w3, bytes(tx_hash), timeout_s)
    except OSError as exc:
        raise ChainUnavailable(  # the error text repeats the URL (its key)
            f"chain at {redact_url(rpc_url)} is unreachable ({type(exc).__name__})"
        ) from None
    if int(receipt["status"]) != 1:
        raise TransactionFailed(f"funding {address} failed")
