"""A DSP provider of another make, driven by hand: an HTTPS listener presenting a member's
certificate that serves one dataset, acknowledges a contract request with a provider pid
of its own and records every message a consumer node sends it. The test answers as that
provider would (a counter-offer of its choosing, an agreement, a FINALIZED event) through
`Peer`, against the consumer node's callback endpoints. Used where this node's own
provider cannot go: it never counters with more than was asked."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qdspace.node.localnet.network import LocalNetwork

from .peer import DSP


class ForeignProvider:
    """Member ``name``'s certificate, serving ``dataset`` (a DSP Dataset, JSON-LD)."""

    def __init__(self, net: LocalNetwork, name: str, dataset: dict[str, Any]) -> None:
        layout = net[name].layout
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/dspace-version":
                    self._answer(200, {"protocolVersions": [{"version": "2025-1", "path": "/"}]})
                elif self.path == f"/catalog/datasets/{dataset['@id']}":
                    self._answer(200, dataset)
                else:
                    self._answer(404, {"@type": "ContractNegotiationError", "reason": ["none"]})

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                with provider.lock:
                    provider.received.append((self.path, body))
                if self.path == "/negotiations/request":
                    ack = {
                        "@context": [DSP],
                        "@type": "ContractNegotiation",
                        "providerPid": f"urn:uuid:{uuid.uuid4()}",
                        "consumerPid": body["consumerPid"],
                        "state": "REQUESTED",
                    }
                    with provider.lock:
                        provider.acks[body["consumerPid"]] = ack["providerPid"]
                    self._answer(201, ack)
                else:
                    self._answer(200)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.acks: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, path: str, kind: str, after: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """The first message of type ``kind`` POSTed to ``path``, past the first ``after``
        such messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [b for p, b in self.received if p == path and b.get("@type") == kind]
            if len(found) > after:
                return found[after]
            time.sleep(0.1)
        with self.lock:
            got = [(p, b.get("@type")) for p, b in self.received]
        raise AssertionError(f"no {kind} at {path}; got {got}")

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.received if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
