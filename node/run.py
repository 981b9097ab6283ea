"""The composition root: wire settings, keys, store and servers once, then serve.

``run_node`` is what ``qdspace node start`` runs: it binds its three ports (peer
gRPC, operator API, regulator API: `node.listeners`) before starting anything, so a
port in use is one clear error and nothing half-started, serves all three in one event
loop, and stops them gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from qdspace.node.api.app import create_app
from qdspace.node.api.regulator_app import create_regulator_app
from qdspace.node.config import NodeSettings
from qdspace.node.context import NodeContext, build_context
from qdspace.node.errors import ConfigError, NodeError
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.node.layout import NodeLayout
from qdspace.node.listeners import bind_socket, check_server_tls, runtime_record
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.federation_service import FederationServicer
from qdspace.node.rpc.limits import CallCaps
from qdspace.node.rpc.node_service import NodeServicer
from qdspace.node.rpc.server import PeerServer, build_server
from qdspace.node.rpc.trace_service import TraceServicer
from qdspace.node.runtime.directory import DirectoryFollower, FollowerSettings
from qdspace.util.files import write_atomic

logger = logging.getLogger("node")


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The operator API's listening socket (see `node.listeners.bind_socket`)."""
    return bind_socket("operator API", host, port)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_peer_server(ctx: NodeContext) -> PeerServer:
    registrations = [NodeServicer(ctx.keys.identity).register, TraceServicer(ctx.store).register]
    registrations.append(FederationServicer.from_context(ctx).register)
    if ctx.contracts is not None:
        from qdspace.node.rpc.contracts_service import contract_registrations

        registrations.extend(contract_registrations(ctx.contracts, ctx.metrics))
    settings = ctx.settings
    caps = CallCaps(
        server_calls=settings.rpc_max_calls,
        per_peer_calls=settings.rpc_max_calls_per_peer,
        per_peer_streams=settings.rpc_max_streams_per_peer,
    )
    return build_server(
        ctx.keys,
        PeerAuthenticator(ctx.revocations, ctx.peers.pinned),
        registrations,
        settings.grpc_host,
        settings.grpc_port,
        caps,
        ctx.metrics,
    )


def directory_follower(ctx: NodeContext, grpc_port: int) -> DirectoryFollower | None:
    """The task that follows the authority service, when ``authority_url`` names one."""
    settings = ctx.settings
    if not settings.authority_url:
        return None
    from qdspace.node.authority.client import AuthorityClient
    from qdspace.node.identity.directory import DirectoryEntry, new_entry

    advertised = settings.advertise_peer or f"{settings.grpc_host}:{grpc_port}"

    def own_entry() -> DirectoryEntry:
        if not settings.advertise_peer and settings.grpc_host in ("0.0.0.0", "::", ""):
            raise ConfigError(
                f"gRPC listens on {settings.grpc_host}: set advertise_peer (host:port other "
                "members reach this node at) in node.json to publish it in the directory"
            )
        endpoints = {"peer": advertised}
        return new_entry(ctx.keys.identity, ctx.keys.signing_key, endpoints, bpn=settings.bpn)

    crl_path = settings.crl_path or settings.layout.crl
    follower = DirectoryFollower(
        AuthorityClient(settings.authority_url, ctx.keys.ca_pem),
        FollowerSettings(
            space=settings.space,
            crl_path=crl_path,
            directory_path=settings.layout.member_directory,
            crl_refresh_s=settings.crl_refresh_s,
            directory_refresh_s=settings.directory_refresh_s,
        ),
        ca_cert=ctx.keys.ca_cert,
        cert_pem=ctx.keys.cert_pem,
        revocations=ctx.revocations,
        peers=ctx.peers,
        own_entry=own_entry,
    )
    follower.load_saved()
    return follower


def runtime_path(directory: Path) -> Path:
    return NodeLayout(directory).runtime


def read_runtime(directory: Path) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads(runtime_path(directory).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def _https_server(app: object, cert: Path, key: Path) -> _Uvicorn:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="on",
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    return _Uvicorn(config)


async def _start(server: _Uvicorn, sock: socket.socket) -> asyncio.Task[None]:
    """Serve ``sock`` in a task; returns once started (or raises what stopped it)."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise NodeError(f"the API listener on {sock.getsockname()} stopped while starting")
    return task


async def serve(ctx: NodeContext, stop: asyncio.Event) -> None:
    settings = ctx.settings
    api_cert, api_key = settings.api_tls
    check_server_tls(api_cert, api_key, "operator API")
    member_cert, member_key = settings.layout.tls_cert, settings.layout.tls_key
    check_server_tls(member_cert, member_key, "regulator API")
    # every listener bound before anything starts: a taken port is one error, nothing half-up
    with contextlib.ExitStack() as bound:
        api_sock = bound.enter_context(bind_api_socket(settings.api_host, settings.api_port))
        reg_sock = bound.enter_context(
            bind_socket("regulator API", settings.regulator_host, settings.regulator_port)
        )
        peer_server = build_peer_server(ctx)
        bound.pop_all()
    from qdspace.node.rpc.federation_link import grpc_coordinators
    from qdspace.node.runtime.federation_member import FederationMember

    # the member side of federated learning runs here, reaching coordinators over gRPC
    federation = FederationMember(
        grpc_coordinators(ctx), settings.directory, ctx.keys.identity.name
    )
    ctx.federation = federation
    api = _https_server(create_app(ctx), api_cert, api_key)
    regulator = _https_server(create_regulator_app(ctx), member_cert, member_key)
    await peer_server.start()
    from qdspace.node.rpc.contracts_jobs import ContractJobs

    contract_jobs = ContractJobs(ctx)
    tasks: list[asyncio.Task[None]] = []
    try:
        tasks.append(await _start(api, api_sock))
        tasks.append(await _start(regulator, reg_sock))
    except BaseException:
        api.should_exit = regulator.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await peer_server.stop(0)
        await contract_jobs.stop()
        raise
    ctx.serving = True  # every listener is up (``/startupz``)
    follower = directory_follower(ctx, peer_server.port)
    ctx.follower = follower  # ``/readyz`` reads whether it holds a directory
    follow_stop = asyncio.Event()
    follow_task = asyncio.create_task(follower.run(follow_stop)) if follower else None
    runtime = {
        "pid": os.getpid(),
        "name": settings.name,
        "member_id": ctx.keys.identity.member_id,
        "role": settings.role,
        **runtime_record(
            settings, peer_server.port, api_sock.getsockname()[1], reg_sock.getsockname()[1]
        ),
        "started_at": time.time(),
    }
    write_atomic(runtime_path(settings.directory), json.dumps(runtime, indent=2).encode())
    logger.info(
        "node %s (%s) serving gRPC on %s, operator API on %s, regulator API on %s; database %s",
        settings.name,
        settings.role,
        runtime["grpc"],
        runtime["api"],
        runtime["regulator"],
        ctx.store.url,  # the password hidden (connector.storage.safe_url)
    )
    try:
        await stop.wait()
    finally:
        logger.info("node %s shutting down (grace %.1fs)", settings.name, settings.shutdown_grace_s)
        ctx.serving = False
        follow_stop.set()
        if follow_task is not None:
            await follow_task
        api.should_exit = regulator.should_exit = True
        await federation.stop()
        await peer_server.stop(settings.shutdown_grace_s)
        await contract_jobs.stop()
        await asyncio.gather(*tasks)
        await ctx.peers.close()
        runtime_path(settings.directory).unlink(missing_ok=True)
        logger.info("node %s stopped", settings.name)


def run_node(directory: Path) -> None:
    """Load, wire and serve a node until SIGTERM/SIGINT."""
    settings = NodeSettings.load(directory)
    ctx = build_context(settings)  # refuses to start without a revocation list
    try:
        ctx.revocations.check_fresh()
    except StaleRevocationList as exc:  # start anyway: a refreshed file is picked up live
        logger.error("%s", exc)
    from qdspace.node.runtime.ledger import attach_ledger

    ledger = attach_ledger(ctx)  # anchorer + QDM sweep threads, when a chain is configured
    if ledger is not None:
        ledger.start()
        # every signed global model version this node coordinates is anchored too
        from qdspace.node.runtime.ledger import enqueue_leaf

        def anchor_version(kind: str, ref_id: str, record: bytes) -> None:
            enqueue_leaf(ctx, kind, ref_id, record)

        ctx.anchor_version = anchor_version

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(ctx, stop)

    try:
        asyncio.run(main())
    finally:
        if ledger is not None:
            ledger.stop()
        ctx.close()
