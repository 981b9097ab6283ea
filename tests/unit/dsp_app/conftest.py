"""The DSP app (`node.dsp.app.create_dsp_app`) in-process: a provider's contract runtime on
SQLite, members with real certificates of a test authority (handed to the app as the
TLS layer does, `node.dsp.auth.PeerCertH11`) and real ID tokens, and a record of what
ran on the event loop. The app runs on an event loop of its own thread (as the node's
listener does), so the test's own calls are never on a loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey
from starlette.types import ASGIApp, Receive, Scope, Send

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.offer_choices import chosen_assets
from qdspace.connector.storage import open_store
from qdspace.node.dsp.app import DspBinding, body_of, create_dsp_app
from qdspace.node.dsp.auth import issue_token
from qdspace.node.dsp.edr import DataTokens
from qdspace.node.dsp.transfer_consumer import DspTransfers
from qdspace.node.dsp.transfer_process import DspTransferMoves
from qdspace.node.dsp.transfers import transfer_router
from qdspace.node.identity.certs import (
    MemberIdentity,
    build_ca_cert,
    build_crl,
    build_member_cert,
    identity_of,
    member_subject,
)
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.runtime.access import DatasetAccess
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock

DSP = "https://w3id.org/dspace/2025/1/context.jsonld"
ENDPOINT = "https://cellex.example:8700"
#: the JSON-LD context of a DSP message carrying a policy: the DSP's, its ODRL profile,
#: ours and Catena-X's
POLICY_CTX = [
    DSP,
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://qdspace.dev/ns/policy/context.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]
SPACE = "test-space"
T = TypeVar("T")


def on_loop() -> bool:
    """Whether the calling thread is running an event loop (the app's, not a worker)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass
class Calls:
    """Calls of the functions `watch` wrapped, and those made on the event loop."""

    counts: dict[str, int]
    on_loop: list[str]

    def watch(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        inner = getattr(owner, name)
        lock = threading.Lock()

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                self.counts[name] = self.counts.get(name, 0) + 1
                if on_loop():
                    self.on_loop.append(name)
            return inner(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


@pytest.fixture
def calls() -> Calls:
    return Calls({}, [])


class Authority:
    """A test data space's CA: issues member certificates; its revocation list is empty."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = build_ca_cert(SPACE, self.key, valid_days=1)
        crl = folder / "crl.pem"
        crl.write_bytes(build_crl(self.cert, self.key, [], dt.timedelta(days=1)))
        self.authenticator = PeerAuthenticator(RevocationList(self.cert, crl))

    def member(self, name: str, role: str, seed: bytes) -> Member:
        key = SigningKey(seed * 32)
        verify_key = bytes(key.verify_key)
        tls = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = build_member_cert(
            ca_cert=self.cert,
            ca_key=self.key,
            subject=member_subject(SPACE, name, member_id_for(name, verify_key), role),
            public_key=tls.public_key(),
            verify_key=verify_key,
            hostnames=[],
            not_before=now - dt.timedelta(minutes=5),
            not_after=now + dt.timedelta(days=1),
        )
        return Member(key, identity_of(cert), cert.public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True)
class Member:
    key: SigningKey
    identity: MemberIdentity
    der: bytes


def with_certificate(app: ASGIApp, der: bytes) -> ASGIApp:
    """`app` called as over a TLS connection whose client presented certificate `der`."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = {**scope.get("extensions", {}), "tls": {"client_cert_der": der}}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return call


class LoopThread:
    """An event loop running in a thread of its own: the app's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@dataclass
class Provider:
    """Cellex (a supplier) with the standard assets, its DSP app and its members."""

    runtime: ContractRuntime
    authority: Authority
    app: Any
    bpn: dict[str, str]
    loop: LoopThread
    callers: list[Caller]

    def client(self, member: Member) -> Caller:
        transport = httpx.ASGITransport(app=with_certificate(self.app, member.der))
        made = Caller(self, member, httpx.AsyncClient(transport=transport, base_url=ENDPOINT))
        self.callers.append(made)
        return made

    def close(self) -> None:
        for caller in self.callers:
            self.loop.run(caller.http.aclose())
        self.loop.close()
        self.runtime.store.engine.dispose()


@dataclass
class Caller:
    provider: Provider
    member: Member
    http: httpx.AsyncClient

    def headers(self) -> dict[str, str]:
        me = self.member.identity.member_id
        token = issue_token(self.member.key, me, self.provider.runtime.me.member_id)
        return {"authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.provider.loop.run(self.http.post(path, json=body, headers=self.headers()))

    def get(self, path: str) -> httpx.Response:
        return self.provider.loop.run(self.http.get(path, headers=self.headers()))

    def catalog(self) -> httpx.Response:
        return self.post("/catalog/request", {"@context": [DSP], "@type": "CatalogRequestMessage"})


def request_message(caller: Caller, cpid: str | None = None) -> dict[str, Any]:
    """A ContractRequestMessage for Cellex's inspections on the offer its catalog shows
    (`cpid`, else a fresh one)."""
    dataset = caller.get("/catalog/datasets/inspections").json()
    return {
        "@context": POLICY_CTX,
        "@type": "ContractRequestMessage",
        "consumerPid": cpid or f"urn:uuid:{uuid.uuid4()}",
        "offer": {**dataset["hasPolicy"][0], "target": "inspections"},
        "callbackAddress": "https://sunarc.example/dsp",
    }


def provider(
    folder: Path,
    access: Callable[[dict[str, str]], DatasetAccess] | None = None,
    url: str | None = None,
) -> Provider:
    """Cellex, whose customer SunArc placed order ``PO-1``; `access` makes the dataset
    access check from the attested BPNs (member id -> BPN, changed by a test at will);
    its database at `url` (a SQLite file in `folder` by default)."""
    authority = Authority(folder)
    cellex = authority.member("cellex", "supplier", b"p")
    qdm = open_store(url or f"sqlite:///{folder / 'cellex.db'}")
    order = {"customer": "sunarc", "supplier": "cellex", "product": "cell", "quantity": 10}
    order |= {"order_id": "PO-1", "status": "open", "opened_at": "2026-01-01T00:00:00Z"}
    qdm.ingest_rows("order", enumerate([order], 1))
    assets = {a.asset_id: a for a in chosen_assets(cellex.identity.member_id, {})}
    runtime = ContractRuntime(
        cellex.identity,
        cellex.key,
        ContractStore(qdm.engine, bytes(32)),
        qdm.engine,
        ContractClock(folder / "clock", control=False),
        bytes(32),
        assets,
    )
    runtime.record = lambda kind, ref, data: None
    bpn: dict[str, str] = {}
    runtime.access = access(bpn) if access is not None else DatasetAccess()
    binding = DspBinding(runtime, authority.authenticator, ENDPOINT, access=runtime.access)
    return Provider(runtime, authority, create_dsp_app(binding), bpn, LoopThread(), [])


@pytest.fixture
def cellex(tmp_path: Path) -> Iterator[Provider]:
    made = provider(tmp_path)
    yield made
    made.close()


def with_transfers(cellex: Provider) -> None:
    """Cellex's DSP app with the transfer routes too (`node.dsp.transfers`)."""
    runtime = cellex.runtime
    moves = DspTransferMoves(runtime, DataTokens(runtime.signing_key, 600), ENDPOINT)
    transfers = DspTransfers(moves, http=None)  # type: ignore[arg-type]  # (nothing sent)
    routes = transfer_router(cellex.authority.authenticator, transfers, body_of, lambda: None)
    binding = DspBinding(runtime, cellex.authority.authenticator, ENDPOINT)
    cellex.app = create_dsp_app(binding, [routes])
