"""The embedded EVM chain: eth-tester + py-evm behind a JSON-RPC HTTP endpoint, no Node.js.

Every local node process talks to one chain process, exactly as it would to a consortium
chain, so the same client code runs against this, Hardhat, ganache or production. The state
lives in ``STATE_DIR/journal.bin`` (see :mod:`ledger.chain_store`): a chain stopped and
restarted on the same directory keeps its blocks, contracts and nonces. Each transaction is
mined into its own block at once (auto-mining), and a request (or a whole batch request) is
answered only after its writes are fsynced, so an acknowledged transaction is never lost.

Run: ``python -m qdspace.ledger.chain --port 8545 --state-dir ./chain`` (``--port 0`` picks a free
port; the address is written to ``STATE_DIR/endpoint.json`` once the chain is ready). The
local network runs it with its output on ``chain.log`` for as long as a demo is kept
running, so the process keeps that file bounded itself (`util.process_log`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth.db.atomic import AtomicDB
from eth.exceptions import TransactionNotFound as EvmTransactionNotFound
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import (
    generate_genesis_state_for_keys,
    get_default_genesis_params,
)
from eth_tester.backends.pyevm.serializers import (
    serialize_transaction,
    serialize_transaction_receipt,
)
from eth_tester.exceptions import TransactionFailed, TransactionNotFound
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.eth_tester.defaults import API_ENDPOINTS
from web3.types import RPCEndpoint, RPCResponse

from qdspace.ledger.artifact import load_artifact
from qdspace.ledger.chain_store import JournaledMemoryDB
from qdspace.util.files import write_atomic
from qdspace.util.process_log import keep_output_bounded

log = logging.getLogger("ledger.chain")

DEFAULT_CHAIN_ID = 424_242
DEFAULT_HOST = "127.0.0.1"
JOURNAL_FILE = "journal.bin"
ENDPOINT_FILE = "endpoint.json"
DEPLOYMENT_FILE = "anchor.json"
MAX_BODY = 8 * 1024 * 1024
DEV_ACCOUNT_COUNT = 10
_LOGS_BLOOM_BYTES = 256


class RpcError(Exception):
    """A JSON-RPC error object to send back (code, message, optional revert data)."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class _RawProvider(EthereumTesterProvider):
    """eth-tester provider that lets revert data through instead of flattening it to text."""

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        namespace, _, endpoint = method.partition("_")
        assert self.api_endpoints is not None
        delegator = self.api_endpoints.get(namespace, {}).get(endpoint)
        if delegator is None:
            raise RpcError(-32601, f"method {method} is not supported by the embedded chain")
        try:
            result = delegator(self.ethereum_tester, params)
        except NotImplementedError:
            raise RpcError(-32601, f"method {method} is not implemented") from None
        return {"id": 0, "jsonrpc": "2.0", "result": result}


def _endpoints(chain_id: int) -> dict[str, dict[str, Any]]:
    endpoints = {ns: dict(methods) for ns, methods in API_ENDPOINTS.items()}
    endpoints["eth"]["chainId"] = lambda *_: chain_id
    endpoints["net"]["version"] = lambda *_: str(chain_id)
    endpoints["web3"]["clientVersion"] = lambda *_: "qdspace-embedded-chain/py-evm"
    return endpoints


def to_json_rpc(value: Any, key: str = "") -> Any:
    """eth-tester results to JSON-RPC wire form: quantities and byte strings as 0x-hex."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if key == "logsBloom":
            return "0x" + value.to_bytes(_LOGS_BLOOM_BYTES, "big").hex()
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): to_json_rpc(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_rpc(v, key) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} for JSON-RPC")


class _IndexedBackend(PyEVMBackend):  # type: ignore[misc]
    """eth-tester's py-evm backend, finding transactions by hash through py-evm's index.

    eth-tester looks a transaction up by scanning every block from the head down (its own
    TODO says so), so each receipt cost grew with the chain: ~40 ms after 200 anchors,
    seconds after tens of thousands. py-evm indexes every mined transaction by hash; this
    asks that index (the pending block, which is not indexed, is still searched first).
    """

    def _locate(self, tx_hash: bytes) -> tuple[Any, Any, int]:
        head = self.chain.get_block()
        for index, tx in enumerate(head.transactions):
            if tx.hash == tx_hash:
                return head, tx, index
        try:
            number, index = self.chain.chaindb.get_transaction_index(tx_hash)
        except EvmTransactionNotFound:
            raise TransactionNotFound(
                f"No transaction found for transaction hash: 0x{bytes(tx_hash).hex()}"
            ) from None
        block = self.chain.get_canonical_block_by_number(number)
        return block, block.transactions[index], index

    def get_transaction_by_hash(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        return serialize_transaction(block, tx, index, is_pending)

    def get_transaction_receipt(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        receipts = block.get_receipts(self.chain.chaindb)
        return serialize_transaction_receipt(
            block, receipts, tx, index, is_pending, self.chain.get_vm()
        )


class EmbeddedChain:
    """One py-evm chain with its journal, answering JSON-RPC requests one at a time."""

    def __init__(self, state_dir: Path, chain_id: int = DEFAULT_CHAIN_ID) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.chain_id = chain_id
        self._lock = threading.Lock()
        self._store = JournaledMemoryDB(state_dir / JOURNAL_FILE)
        backend = _IndexedBackend()  # builds a throwaway in-memory chain; we swap in ours below
        base_class = type(backend.chain)
        chain_class: Any = type("QdspaceDevChain", (base_class,), {"chain_id": chain_id})
        db = AtomicDB(self._store)
        if self._store.is_empty:
            genesis_state = generate_genesis_state_for_keys(backend.account_keys)
            backend.chain = chain_class.from_genesis(
                db, get_default_genesis_params(), genesis_state
            )
        else:
            backend.chain = chain_class(db)
        self._store.commit()
        self._backend = backend
        self._provider = _RawProvider(EthereumTester(backend), _endpoints(chain_id))
        w3 = Web3(self._provider)
        self._request = self._provider.request_func(w3, w3.middleware_onion)

    @property
    def dev_accounts(self) -> list[str]:
        """Pre-funded, unlocked accounts (for deploying and funding on a dev chain only)."""
        return [Web3.to_checksum_address(a) for a in self._backend.get_accounts()]

    def call(self, method: str, params: list[Any], *, commit: bool = True) -> Any:
        """Run one JSON-RPC method; the result is in wire form. Raises RpcError.

        ``commit=False`` leaves the journal's fsync to the caller (a batch request commits
        once, before its answer goes out)."""
        with self._lock:
            try:
                response = self._request(RPCEndpoint(method), params)
            except RpcError:
                raise
            except TransactionFailed as exc:
                raise _revert_error(exc) from None
            except Exception as exc:  # any chain-side refusal becomes a JSON-RPC error
                raise RpcError(-32000, f"{type(exc).__name__}: {exc}") from None
            finally:
                if commit:
                    self._store.commit()
        if "error" in response:
            err = response["error"]
            raise RpcError(int(err.get("code", -32000)), str(err.get("message", err)))
        return to_json_rpc(response.get("result"))

    def handle_batch(self, requests: list[Any]) -> list[dict[str, Any]]:
        """A JSON-RPC batch, in order, with one journal commit (one fsync) for all of it
        before the answer goes out: an anchorer's window of 16 transactions costs one
        fsync, not 16, and nothing of a batch is acknowledged before it is durable."""
        try:
            return [self.handle(r, commit=False) for r in requests]
        finally:
            with self._lock:
                self._store.commit()

    def handle(self, request: Any, *, commit: bool = True) -> dict[str, Any]:
        """One JSON-RPC request object to one response object."""
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error_response(rid, RpcError(-32600, "invalid JSON-RPC request"))
        params = request.get("params", [])
        if not isinstance(params, list):
            return _error_response(rid, RpcError(-32602, "params must be a list"))
        try:
            result = self.call(request["method"], params, commit=commit)
        except RpcError as exc:
            return _error_response(rid, exc)
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def close(self) -> None:
        """Make everything durable and release the journal."""
        with self._lock:
            self._store.close()


def _revert_error(exc: TransactionFailed) -> RpcError:
    arg = exc.args[0] if exc.args else b""
    if isinstance(arg, Exception) and arg.args:
        arg = arg.args[0]
    if isinstance(arg, bytes | bytearray):
        return RpcError(3, "execution reverted", "0x" + bytes(arg).hex())
    return RpcError(3, f"execution reverted: {arg}")


def _error_response(rid: Any, exc: RpcError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        error["data"] = exc.data
    return {"jsonrpc": "2.0", "id": rid, "error": error}


def _handler_for(chain: EmbeddedChain) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, {"error": "request too large"})
                return
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self._reply(200, _error_response(None, RpcError(-32700, "parse error")))
                return
            if isinstance(body, list):
                self._reply(200, chain.handle_batch(body))
            else:
                self._reply(200, chain.handle(body))

        def _reply(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("chain.http: " + format, *args)

    return Handler


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a running embedded chain answers (written to ``endpoint.json``)."""

    url: str
    chain_id: int
    pid: int


class ChainServer:
    """The HTTP server around an EmbeddedChain; ``serve_forever`` until ``shutdown``."""

    def __init__(self, chain: EmbeddedChain, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.chain = chain
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(chain))
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_endpoint(self) -> Endpoint:
        """Publish the URL so launchers and tests know the chain is ready."""
        endpoint = Endpoint(self.url, self.chain.chain_id, os.getpid())
        path = self.chain.state_dir / ENDPOINT_FILE
        doc = {"url": endpoint.url, "chain_id": endpoint.chain_id, "pid": endpoint.pid}
        write_atomic(path, json.dumps(doc).encode(), mode=0o644)
        return endpoint

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` is called (from another thread)."""
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop serving and make the chain durable."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.chain.close()


def read_endpoint(state_dir: Path) -> Endpoint | None:
    """The endpoint a chain process published, or None while it is starting."""
    try:
        doc = json.loads((state_dir / ENDPOINT_FILE).read_text())
        return Endpoint(str(doc["url"]), int(doc["chain_id"]), int(doc["pid"]))
    except (OSError, ValueError, KeyError):
        return None


def deploy_with_dev_account(chain: EmbeddedChain) -> dict[str, Any]:
    """Deploy the anchor contract once from the first dev account; reuse it on restart."""
    path = chain.state_dir / DEPLOYMENT_FILE
    if path.exists():
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    sender = chain.dev_accounts[0]
    art = load_artifact()
    tx_hash = chain.call(
        "eth_sendTransaction", [{"from": sender, "data": art.bytecode, "gas": hex(1_000_000)}]
    )
    receipt = chain.call("eth_getTransactionReceipt", [tx_hash])
    doc = {
        "address": Web3.to_checksum_address(receipt["contractAddress"]),
        "chain_id": chain.chain_id,
        "block_number": int(receipt["blockNumber"], 16),
        "tx_hash": tx_hash,
    }
    write_atomic(path, json.dumps(doc, indent=2).encode(), mode=0o644)
    return doc


def run(state_dir: Path, host: str, port: int, chain_id: int, deploy: bool) -> None:
    """Start the chain, publish its endpoint, serve until SIGTERM/SIGINT."""
    (state_dir / ENDPOINT_FILE).unlink(missing_ok=True)  # stale from an earlier run
    chain = EmbeddedChain(state_dir, chain_id)
    server = ChainServer(chain, host, port)
    if deploy:
        info = deploy_with_dev_account(chain)
        log.info("chain.run: anchor contract at %s", info["address"])
    endpoint = server.write_endpoint()
    log.info("chain.run: chain %s listening on %s", chain_id, endpoint.url)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m qdspace.ledger.chain``: the embedded chain as a process (its output
    file kept bounded when its launcher names it: `keep_output_bounded`)."""
    keep_output_bounded()
    parser = argparse.ArgumentParser(
        prog="python -m qdspace.ledger.chain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where the chain lives")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=8545, help="0 picks a free port")
    parser.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID)
    parser.add_argument(
        "--no-deploy",
        action="store_true",
        help="do not deploy the anchor contract from a dev account",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(args.state_dir, args.host, args.port, args.chain_id, not args.no_deploy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
