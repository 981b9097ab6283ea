"""The anchor contract over any EVM JSON-RPC endpoint (web3.py), with errors in ledger terms.

Reading (``lookup``, receipts, logs) needs only the URL and the contract address; anchoring
also needs a :class:`~ledger.keys.ChainSigner`. Transactions are signed locally and sent raw,
so the same code works against the embedded chain, Hardhat, ganache and production nodes,
and a signed transaction can be stored before it is sent and resent byte for byte.

The endpoint is often a third party's (a hosted RPC service), and everything it answers is
checked as a peer's bytes are. Its answers are read whole within ``timeout_s`` and up to
`MAX_ANSWER_BYTES`, every transport failure a `ChainUnavailable` (`qdspace.ledger.rpc_http`
says why). The fees it quotes are signed only up to the node's caps
(``max_fee_per_gas``, ``max_gas``: an endpoint quoting 3e15 wei a gas had the node sign away
whatever the account held); a receipt must be the one asked for (a receipt of another
transaction, or an invented one carrying an ``Anchored`` log of the root, had the anchorer
record the batch ANCHORED for good); logs are read in pages of `LOG_PAGE_BLOCKS` blocks (an
answer stays under the size cap, and hosted endpoints refuse wider ranges). Every chain
number it answers is read by `qdspace.ledger.rpc_answers.chain_number` (SQLite keeps them),
every malformed answer (a batch that is no list of answers, a log too short to decode,
anything web3 cannot read) is a `ChainUnavailable`, never a ``TypeError`` that reaches a
caller as a 500.

The endpoint may come to serve another chain while the node runs: the anchorer's chain watch
(`qdspace.ledger.chain_watch`) looks each pass (`observe`), and while it sees another chain
every other call is a `ChainSwapped` (`hold_reads`): nothing is signed for it, and a proof
is not read as "not anchored" where the truth is "not this chain".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractLogicError,
    Web3Exception,
    Web3RPCError,
)
from web3.providers.rpc import HTTPProvider

from qdspace.ledger.artifact import load_artifact
from qdspace.ledger.errors import (
    AlreadyAnchored,
    ChainSwapped,
    ChainUnavailable,
    FeeAboveCap,
    LedgerError,
    NonceConsumed,
    TransactionFailed,
    WrongChain,
)
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.rpc_answers import AnchoredEvent as AnchoredEvent
from qdspace.ledger.rpc_answers import (
    ChainView,
    anchored_event,
    batch_answers,
    chain_number,
    chain_view,
)
from qdspace.ledger.rpc_answers import OnChainRoot as OnChainRoot
from qdspace.ledger.rpc_answers import TxReceipt as TxReceipt
from qdspace.ledger.rpc_http import MAX_ANSWER_BYTES, BoundedSession, chain_errors
from qdspace.ledger.tx import DEFAULT_MAX_FEE_PER_GAS, DEFAULT_MAX_GAS, GAS_MARGIN, SignedAnchor
from qdspace.util.redact import redact_url

log = logging.getLogger("ledger.client")

DEFAULT_TIMEOUT_S = 10.0
FEE_TTL_S = 5.0
#: blocks a log query covers at once (`anchored_by`)
LOG_PAGE_BLOCKS = 2_000

_ALREADY_ANCHORED = "0x" + keccak(text="AlreadyAnchored(bytes32)")[:4].hex()
_ANCHORED_TOPIC = "0x" + keccak(text="Anchored(bytes32,uint8,uint64,address,uint64,uint64)").hex()
_KNOWN_TX = ("already known", "known transaction", "already imported", "alreadyknown")

T = TypeVar("T")


class LedgerClient:
    """The anchor contract at ``contract_address`` on the chain at ``rpc_url``."""

    def __init__(
        self,
        rpc_url: str,
        contract_address: str,
        *,
        expected_chain_id: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_fee_per_gas: int = DEFAULT_MAX_FEE_PER_GAS,
        max_gas: int = DEFAULT_MAX_GAS,
    ) -> None:
        self.rpc_url = rpc_url
        #: the URL as messages show it (a hosted endpoint's carries its API key)
        self.shown_url = redact_url(rpc_url)
        self._session = BoundedSession(rpc_url, timeout_s, MAX_ANSWER_BYTES)
        provider = HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": timeout_s},
            session=self._session,
            exception_retry_configuration=None,
        )
        self.w3 = Web3(provider)
        if not Web3.is_address(contract_address):
            raise WrongChain(f"contract address {contract_address!r} is not an address")
        self.address = Web3.to_checksum_address(contract_address)
        self.contract = self.w3.eth.contract(address=self.address, abi=load_artifact().abi)
        self.expected_chain_id = expected_chain_id
        self._chain_id: int | None = None
        self._timeout_s = timeout_s
        self.max_fee_per_gas, self.max_gas = max_fee_per_gas, max_gas
        self._fee_lock = threading.Lock()
        self._fee_cache: tuple[float, dict[str, int]] | None = None
        self._held: str | None = None  # why every call is refused (`hold_reads`)

    def _call(self, fn: Callable[[], T], keep: tuple[type[Web3Exception], ...] = ()) -> T:
        """``fn()``'s web3 call, its failures a ChainUnavailable but those in ``keep``
        (a revert `_estimate` reads, an RPC error `send_raw` reads)."""
        self._refuse_if_held()
        with chain_errors(self.rpc_url):
            try:
                return fn()
            except keep:
                raise
            except Web3Exception as exc:  # BadResponseFormat: an answer web3 cannot read
                raise ChainUnavailable(
                    f"chain at {self.shown_url} answered what web3 cannot read "
                    f"({type(exc).__name__}: {str(exc)[:200]})"
                ) from None

    def _number(self, value: object, what: str) -> int:
        return chain_number(value, what, self.shown_url)

    @property
    def chain_id(self) -> int:
        """The chain id the endpoint reports (asked once; the chain watch notices a change)."""
        if self._chain_id is None:
            self._chain_id = self._number(self._call(lambda: self.w3.eth.chain_id), "chain id")
        return self._chain_id

    def check(self) -> None:
        """WrongChain unless the endpoint serves the expected chain and the contract is there."""
        if self.expected_chain_id is not None and self.chain_id != self.expected_chain_id:
            raise WrongChain(
                f"chain at {self.shown_url} has chain id {self.chain_id}, "
                f"expected {self.expected_chain_id}"
            )
        code = self._call(lambda: self.w3.eth.get_code(self.address))
        if len(code) == 0:
            raise WrongChain(f"no contract at {self.address} on chain {self.chain_id}")

    def lookup(self, root: bytes) -> OnChainRoot | None:
        """The contract's record of ``root``, or None if it was never anchored."""
        fn = self.contract.functions.lookup(root)
        try:
            count, kind, anchorer, block, ts = self._call(
                lambda: fn.call(), keep=(BadFunctionCallOutput,)
            )
        except BadFunctionCallOutput:
            raise WrongChain(
                f"no anchor contract at {self.address} on chain {self.chain_id}"
            ) from None
        if block == 0:
            return None
        block = self._number(block, "the block of a root")
        return OnChainRoot(root, int(count), int(kind), str(anchorer), block, int(ts))

    def pending_nonce(self, address: str) -> int:
        """The next nonce for ``address``, counting transactions still in the pool."""
        checksum = Web3.to_checksum_address(address)
        nonce = self._call(lambda: self.w3.eth.get_transaction_count(checksum, "pending"))
        return self._number(nonce, "a nonce")

    def balance(self, address: str) -> int:
        """Balance in wei."""
        return int(self._call(lambda: self.w3.eth.get_balance(Web3.to_checksum_address(address))))

    def sign_anchor(
        self,
        signer: ChainSigner,
        root: bytes,
        leaf_count: int,
        kind: int,
        nonce: int,
        *,
        gas: int | None = None,
    ) -> SignedAnchor:
        """Sign ``anchor(root, leafCount, kind)``.

        Without ``gas`` the chain estimates it, which also raises AlreadyAnchored for a known
        root; with ``gas`` (the anchorer passes :data:`ANCHOR_GAS`) nothing is executed
        before sending, and a known root makes the mined transaction revert instead.
        """
        data = self.contract.encode_abi("anchor", args=[root, leaf_count, kind])
        tx: dict[str, Any] = {
            "from": signer.address,
            "to": self.address,
            "data": data,
            "value": 0,
            "nonce": nonce,
            "chainId": self.chain_id,
        }
        tx["gas"] = int(self._estimate(tx, root) * GAS_MARGIN) if gas is None else gas
        if tx["gas"] > self.max_gas:
            raise FeeAboveCap(
                f"chain at {self.shown_url} wants a gas limit of {tx['gas']} for an anchor, "
                f"over this node's cap of {self.max_gas} (ledger setting max_gas)"
            )
        tx.update(self._fees())
        del tx["from"]
        signed = signer.sign(tx)
        return SignedAnchor(
            bytes(signed.raw_transaction), bytes(signed.hash), nonce, signer.address
        )

    def estimate_anchor_gas(self, sender: str, root: bytes, leaf_count: int, kind: int) -> int:
        """The chain's gas estimate for one ``anchor`` call (to check :data:`ANCHOR_GAS`)."""
        data = self.contract.encode_abi("anchor", args=[root, leaf_count, kind])
        tx = {"from": Web3.to_checksum_address(sender), "to": self.address, "data": data}
        return self._estimate(tx, root)

    def _estimate(self, tx: dict[str, Any], root: bytes) -> int:
        try:
            return int(
                self._call(
                    lambda: self.w3.eth.estimate_gas(tx),  # type: ignore[arg-type]
                    keep=(ContractLogicError,),
                )
            )
        except ContractLogicError as exc:
            # Chains spell revert data differently (ganache nests it); look for the
            # AlreadyAnchored selector anywhere, else ask the contract itself.
            text = f"{exc} {exc.data}".lower()
            if _ALREADY_ANCHORED[2:] in text or self.lookup(root) is not None:
                raise AlreadyAnchored("0x" + root.hex()) from None
            raise TransactionFailed(f"anchor would revert: {exc}") from None

    def _fees(self) -> dict[str, int]:
        """Fee fields, asked at most every FEE_TTL_S (max fee = 2 x base fee + tip)."""
        with self._fee_lock:
            if self._fee_cache is not None and time.monotonic() - self._fee_cache[0] < FEE_TTL_S:
                return dict(self._fee_cache[1])
        block = self._call(lambda: self.w3.eth.get_block("latest"))
        base = block.get("baseFeePerGas")
        if base is None:
            price = int(self._call(lambda: self.w3.eth.gas_price))
            self._within_cap(price, "a gas price")
            fees = {"gasPrice": price}
        else:
            tip = int(self._call(lambda: self.w3.eth.max_priority_fee))
            self._within_cap(int(base) + tip, "a base fee and tip")  # what it pays now
            fees = {
                "maxFeePerGas": min(2 * int(base) + tip, self.max_fee_per_gas),
                "maxPriorityFeePerGas": tip,
            }
        with self._fee_lock:
            self._fee_cache = (time.monotonic(), fees)
        return dict(fees)

    def _within_cap(self, wei: int, what: str) -> None:
        if not 0 <= wei <= self.max_fee_per_gas:
            raise FeeAboveCap(
                f"chain at {self.shown_url} asks {what} of {wei / 1e9:.9g} gwei a gas unit, "
                f"over this node's cap of {self.max_fee_per_gas / 1e9:.9g} gwei "
                "(ledger setting max_fee_gwei); anchoring waits"
            )

    def forget_fees(self) -> None:
        """Ask the chain for fees again at the next signature (after a refused transaction)."""
        with self._fee_lock:
            self._fee_cache = None

    def send_raw(self, raw: bytes) -> bytes:
        """Send a signed transaction; resending one the pool already holds is not an error."""
        try:
            return bytes(
                self._call(lambda: self.w3.eth.send_raw_transaction(raw), keep=(Web3RPCError,))
            )
        except Web3RPCError as exc:
            refusal = self._refusal(raw, str(exc))
            if refusal is None:
                return bytes(keccak(raw))
            raise refusal from None

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        """The receipt of a mined transaction, or None while it is pending or unknown."""
        return self.receipts([tx_hash])[0]

    def receipts(self, tx_hashes: Sequence[bytes]) -> list[TxReceipt | None]:
        """Many receipts in one JSON-RPC batch request (None: pending or unknown)."""
        answers = self._batch(
            [("eth_getTransactionReceipt", ["0x" + bytes(h).hex()]) for h in tx_hashes]
        )
        out: list[TxReceipt | None] = []
        for asked, answer in zip(tx_hashes, answers, strict=True):
            if "error" in answer:
                raise ChainUnavailable(f"chain at {self.shown_url}: {str(answer['error'])[:500]}")
            rcpt = answer.get("result")
            try:
                receipt = None if rcpt is None else self._parse_receipt(rcpt)
            except (KeyError, TypeError, ValueError, AttributeError, DecodingError) as exc:
                raise ChainUnavailable(
                    f"chain at {self.shown_url} answered a malformed receipt "
                    f"({type(exc).__name__}: {str(exc)[:200]})"
                ) from None
            if receipt is not None and receipt.tx_hash != bytes(asked):
                raise ChainUnavailable(
                    f"chain at {self.shown_url} answered the receipt of transaction "
                    f"0x{receipt.tx_hash.hex()} when asked for 0x{bytes(asked).hex()}"
                )
            out.append(receipt)
        return out

    def send_raw_many(self, raws: Sequence[bytes]) -> list[LedgerError | None]:
        """Send signed transactions in one JSON-RPC batch request, in order (nonce order).

        Returns, per transaction, None when the chain took it (or already had it) and
        NonceConsumed or TransactionFailed as :meth:`send_raw` would raise them.
        """
        answers = self._batch([("eth_sendRawTransaction", ["0x" + r.hex()]) for r in raws])
        out: list[LedgerError | None] = []
        for raw, answer in zip(raws, answers, strict=True):
            error = answer.get("error")
            out.append(None if error is None else self._refusal(raw, str(error)))
        return out

    def _refusal(self, raw: bytes, text: str) -> LedgerError | None:
        low = text.lower()
        if any(k in low for k in _KNOWN_TX) or self.receipt(bytes(keccak(raw))) is not None:
            return None  # in the pool or mined already: resending changed nothing
        if "nonce" in low:
            return NonceConsumed(f"chain refused the transaction: {text}")
        return TransactionFailed(f"chain refused the transaction: {text}")

    def observe(self, block_number: int | None = None) -> ChainView:
        """The endpoint's chain id, head and (with `block_number`) that block's hash, in one
        request, asked even while calls are held (the chain watch asks whether ours is back)."""
        calls: list[tuple[str, list[Any]]] = [("eth_chainId", []), ("eth_blockNumber", [])]
        if block_number is not None:
            calls.append(("eth_getBlockByNumber", [hex(block_number), False]))
        return chain_view(self._batch(calls, held_too=True), block_number, self.shown_url)

    def hold_reads(self, why: str | None) -> None:
        """Refuse every call but `observe` with ChainSwapped(`why`) (None: no longer)."""
        self._held = why

    @property
    def held(self) -> str | None:
        """Why every call but `observe` is refused now (`hold_reads`); None: none is."""
        return self._held

    def _refuse_if_held(self) -> None:
        if (held := self._held) is not None:
            raise ChainSwapped(held)

    def _batch(
        self, calls: Sequence[tuple[str, list[Any]]], *, held_too: bool = False
    ) -> list[dict[str, Any]]:
        """One HTTP request with a JSON-RPC batch; the answers in call order."""
        if not held_too:
            self._refuse_if_held()
        if not calls:
            return []
        body: list[Any] = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)
        ]
        # one call goes as a plain request: endpoints without batch support then work with
        # ``max_in_flight = 1``
        single = len(body) == 1
        with chain_errors(self.rpc_url):
            response = self._session.post(
                self.rpc_url, json=body[0] if single else body, timeout=self._timeout_s
            )
            response.raise_for_status()
        try:
            doc = response.json()
        except ValueError:
            raise ChainUnavailable(f"chain at {self.shown_url} answered no JSON") from None
        if single and isinstance(doc, dict):
            doc = [doc]
        return batch_answers(doc, len(calls), self.shown_url)

    def _parse_receipt(self, rcpt: dict[str, Any]) -> TxReceipt:
        tx_hash = bytes(HexBytes(rcpt["transactionHash"]))
        block = self._number(rcpt["blockNumber"], "a malformed receipt: blockNumber")
        anchored = []
        for entry in rcpt.get("logs") or []:
            topics = [bytes(HexBytes(t)) for t in entry.get("topics") or []]
            if (
                len(topics) == 4
                and Web3.to_checksum_address(entry["address"]) == self.address
                and "0x" + topics[0].hex() == _ANCHORED_TOPIC
            ):
                data = bytes(HexBytes(entry["data"]))
                anchored.append(anchored_event(topics, data, tx_hash, entry, self.shown_url))
        return TxReceipt(
            tx_hash,
            block,
            bytes(HexBytes(rcpt["blockHash"])),
            int(rcpt["status"], 16) == 1,
            tuple(anchored),
        )

    def anchoring_tx(self, root: bytes, block_number: int) -> bytes | None:
        """The hash of the transaction that anchored ``root`` in ``block_number`` (a log query)."""
        params: Any = {
            "address": self.address,
            "fromBlock": block_number,
            "toBlock": block_number,
            "topics": [_ANCHORED_TOPIC, "0x" + root.hex()],
        }
        found = (self._log_event(entry) for entry in self._logs(params))
        return next((e.tx_hash for e in found if e and e.root == root), None)

    def anchored_by(self, anchorer: str, from_block: int, to_block: int) -> list[AnchoredEvent]:
        """Every root ``anchorer`` anchored in blocks ``from_block..to_block``, in chain order
        (asked `LOG_PAGE_BLOCKS` blocks at a time; logs of another contract, event or
        anchorer, which an endpoint should not have answered, are left out)."""
        anchorer = Web3.to_checksum_address(anchorer)
        account_topic = "0x" + bytes(12).hex() + anchorer[2:].lower()
        events: list[AnchoredEvent] = []
        for first in range(from_block, to_block + 1, LOG_PAGE_BLOCKS):
            params: Any = {
                "address": self.address,
                "fromBlock": first,
                "toBlock": min(first + LOG_PAGE_BLOCKS - 1, to_block),
                "topics": [_ANCHORED_TOPIC, None, None, account_topic],
            }
            found = (self._log_event(entry) for entry in self._logs(params))
            events += [e for e in found if e is not None and e.anchorer == anchorer]
        return sorted(events, key=lambda e: (e.block_number, e.log_index))

    def _logs(self, params: Any) -> Any:
        return self._call(lambda: self.w3.eth.get_logs(params))

    def _log_event(self, entry: Any) -> AnchoredEvent | None:
        """The ``Anchored`` event a log entry holds, or None for any other log."""
        try:
            topics = [bytes(t) for t in entry.get("topics") or ()]
            if (
                len(topics) != 4
                or "0x" + topics[0].hex() != _ANCHORED_TOPIC
                or Web3.to_checksum_address(entry["address"]) != self.address
            ):
                return None
            data, tx_hash = bytes(entry["data"]), bytes(entry["transactionHash"])
            return anchored_event(topics, data, tx_hash, entry, self.shown_url)
        except (KeyError, TypeError, ValueError, AttributeError, DecodingError) as exc:
            raise ChainUnavailable(
                f"chain at {self.shown_url} answered a malformed log "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None

    def latest_block(self) -> int:
        """The current block number."""
        return self._number(self._call(lambda: self.w3.eth.block_number), "a head block")

    def block_timestamp(self, block_number: int) -> int | None:
        """A block's timestamp (seconds), or None if the chain has no such block."""
        try:
            block = self._call(lambda: self.w3.eth.get_block(block_number), keep=(Web3RPCError,))
        except Web3RPCError:  # BlockNotFound, or an endpoint refusing the number
            return None
        return self._number(block.get("timestamp"), "a block timestamp")

    def block_hashes(self, numbers: Sequence[int]) -> dict[int, bytes]:
        """The canonical hashes of blocks (one JSON-RPC batch request); a block the chain
        does not have is left out."""
        calls = [("eth_getBlockByNumber", [hex(n), False]) for n in numbers]
        out: dict[int, bytes] = {}
        for number, answer in zip(numbers, self._batch(calls), strict=True):
            block = answer.get("result")
            if "error" in answer or not isinstance(block, dict):
                continue
            try:
                out[number] = bytes(HexBytes(block["hash"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ChainUnavailable(
                    f"chain at {self.shown_url} answered a malformed block ({type(exc).__name__})"
                ) from None
        return out

    def block_hash(self, block_number: int) -> bytes | None:
        """The canonical hash of a block, or None if the chain has no such block."""
        malformed = f"chain at {self.shown_url} answered a malformed block"
        try:
            block = self._call(lambda: self.w3.eth.get_block(block_number), keep=(Web3RPCError,))
        except Web3RPCError:  # BlockNotFound, or an endpoint refusing the number
            return None
        except (TypeError, ValueError) as exc:  # web3's formatters: a hash of no hex
            raise ChainUnavailable(f"{malformed} ({type(exc).__name__})") from None
        try:
            digest = bytes(HexBytes(block["hash"]))
        except (KeyError, TypeError, ValueError) as exc:  # no hash, or no bytes of one
            raise ChainUnavailable(f"{malformed} ({type(exc).__name__})") from None
        if len(digest) != 32:
            raise ChainUnavailable(f"{malformed} (a hash of {len(digest)} bytes)")
        return digest
