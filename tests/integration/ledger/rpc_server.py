"""A JSON-RPC endpoint served by this test process: a real HTTP server on a free local
port whose answers a test decides (`JsonRpcServer.answer`), batches included. The hostile
endpoint tests script the chain with it, the verifier tests put it in front of the real
chain to rewrite what it answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonRpcServer:
    """Serves JSON-RPC over HTTP at `url`, each request (or each of a batch) answered by
    `answer`; `close` stops it."""

    def __init__(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                out = [endpoint.answer(r) for r in body] if isinstance(body, list) else None
                data = json.dumps(out if out is not None else endpoint.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
