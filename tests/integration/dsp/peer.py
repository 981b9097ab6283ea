"""A member of the space talking DSP by hand: its certificate and key, raw messages, and a
callback listener (HTTPS with its member certificate) that records what the node sends."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from qdspace.node.dsp.auth import issue_token
from qdspace.node.localnet.network import LocalNetwork

from .conftest import ok, runtime_of

DSP = "https://w3id.org/dspace/2025/1/context.jsonld"
POLICY_CTX = [
    DSP,
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://qdspace.dev/ns/policy/context.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]


class Callbacks:
    """The member's DSP callback address: records each message the provider POSTs, and
    counts the connections it accepted (a TLS handshake done) and every request line it
    was sent, whatever its method."""

    def __init__(self, net: LocalNetwork, name: str) -> None:
        layout = net[name].layout
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.connections = 0
        self.lines: list[bytes] = []
        lock = self.lock = threading.Lock()
        received = self.received
        callbacks = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                super().handle_one_request()
                if self.raw_requestline:
                    with lock:
                        callbacks.lines.append(self.raw_requestline)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                with lock:
                    received.append((self.path, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                with lock:  # accepted: the TLS handshake is done
                    callbacks.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, pid: str, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first message of type `kind` POSTed for our process `pid`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for path, body in self.received:
                    if path.startswith(f"/negotiations/{pid}/") and body.get("@type") == kind:
                        return body
            time.sleep(0.1)
        raise AssertionError(f"no {kind} for {pid}; got {[p for p, _ in self.received]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Peer:
    """A caller holding member `name`'s certificate and key, calling `provider`'s DSP."""

    def __init__(self, net: LocalNetwork, name: str, provider: str) -> None:
        layout = net[name].layout
        context = ssl.create_default_context(cafile=str(layout.ca_cert))
        context.check_hostname = False
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.keys = net[name].keys()
        self.audience = net[provider].keys().identity.member_id
        self.http = httpx.Client(verify=context, base_url=runtime_of(net, provider)["dsp"])

    def headers(self) -> dict[str, str]:
        token = issue_token(self.keys.signing_key, self.keys.identity.member_id, self.audience)
        return {"authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, json=body, headers=self.headers())

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers=self.headers())

    def state(self, provider_pid: str) -> str:
        return str(ok(self.get(f"/negotiations/{provider_pid}"))["state"])

    def catalog_offer(self, dataset: str) -> dict[str, Any]:
        offer: dict[str, Any] = ok(self.get(f"/catalog/datasets/{dataset}"))["hasPolicy"][0]
        return {**offer, "target": dataset}


@contextmanager
def peer_with_callbacks(
    net: LocalNetwork, name: str, provider: str
) -> Iterator[tuple[Peer, Callbacks]]:
    callbacks = Callbacks(net, name)
    peer = Peer(net, name, provider)
    try:
        yield peer, callbacks
    finally:
        peer.http.close()
        callbacks.close()


def constraint(offer: dict[str, Any], left: str) -> dict[str, Any]:
    """The permission constraint on `left` (``order``, ``fields``, ``purpose``) of `offer`."""
    permission = offer["permission"]
    rule = permission[0] if isinstance(permission, list) else permission
    items = rule["constraint"] if isinstance(rule["constraint"], list) else [rule["constraint"]]
    for item in items:
        if item["leftOperand"] in (left, f"qds:{left}", f"odrl:{left}"):
            return dict(item)
    raise AssertionError(f"no {left} constraint in {offer}")


def values(offer: dict[str, Any], left: str) -> set[str]:
    right = constraint(offer, left)["rightOperand"]
    items = right if isinstance(right, list) else [right]
    return {i["@value"] if isinstance(i, dict) else i for i in items}


def with_values(offer: dict[str, Any], left: str, new: set[str]) -> dict[str, Any]:
    """A copy of `offer` whose `left` constraint lists `new`."""
    copy = json.loads(json.dumps(offer))
    permission = copy["permission"]
    rule = permission[0] if isinstance(permission, list) else permission
    items = rule["constraint"] if isinstance(rule["constraint"], list) else [rule["constraint"]]
    for item in items:
        if item["leftOperand"] in (left, f"qds:{left}", f"odrl:{left}"):
            item["rightOperand"] = sorted(new)
    return copy


def request(consumer_pid: str, offer: dict[str, Any], callback: str) -> dict[str, Any]:
    return {
        "@context": POLICY_CTX,
        "@type": "ContractRequestMessage",
        "consumerPid": consumer_pid,
        "offer": offer,
        "callbackAddress": callback,
    }
