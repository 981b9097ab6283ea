"""The composition root: wire settings, keys, store and servers once, then serve.

``run_node`` is what ``qdspace node start`` runs (its peer side is a
`node.serving.MemberServer`, as each tenant of a managed host is): it binds its three ports (peer
gRPC, operator API, regulator API: `node.listeners`) before starting anything, so a
port in use is one clear error and nothing half-started, serves all three in one event
loop, and stops them gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from qdspace.connector import held_connection
from qdspace.node.api.app import create_app
from qdspace.node.api.regulator_app import create_regulator_app
from qdspace.node.client_transport import runtime_file  # where clients read it
from qdspace.node.config import NodeSettings
from qdspace.node.context import NodeContext, build_context
from qdspace.node.errors import NodeError
from qdspace.node.http_listener import DEFAULT_GRACE_S, HeadDeadlineH11, NodeHttpServer
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.node.listeners import (
    LOOPBACK_OF,
    bind_socket,
    check_server_tls,
    https_url,
    runtime_record,
)
from qdspace.node.serving import MemberServer, attach_anchoring, call_limiter
from qdspace.util.files import write_atomic
from qdspace.util.recursion import hold_recursion_limit
from qdspace.util.startup import collector_paused
from qdspace.util.urls import host_port, https_origin

logger = logging.getLogger("node")


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The operator API's listening socket (see `node.listeners.bind_socket`)."""
    return bind_socket("operator API", host, port)


#: the name the listeners had here (a node's HTTPS servers: `node.http_listener`)
_Uvicorn = NodeHttpServer


def https_server(
    app: object,
    cert: Path,
    key: Path,
    *,
    lifespan: str = "on",
    key_password: str | None = None,
    grace: float = DEFAULT_GRACE_S,
) -> _Uvicorn:
    """uvicorn serving ``app`` over TLS (its socket is given to `start_listener`, which
    loads the files: they may be transient, `identity.keyfiles.transient_key_file`);
    a stop lets in-flight requests finish within ``grace`` seconds."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan=lifespan,  # type: ignore[arg-type]
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_keyfile_password=key_password,
        http=HeadDeadlineH11,
        # uvicorn would believe X-Forwarded-For from loopback (FORWARDED_ALLOW_IPS): a
        # caller on this machine could name any client address; nothing here asks for one
        proxy_headers=False,
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]  # asyncio.timeout's float
    )
    return _Uvicorn(config)


async def start_listener(server: _Uvicorn, sock: socket.socket) -> asyncio.Task[None]:
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
    member = MemberServer(ctx)  # the peer side, as a managed host runs it per tenant
    # every listener bound before anything starts: a taken port is one error, nothing half-up
    with contextlib.ExitStack() as bound:
        api_sock = bound.enter_context(bind_api_socket(settings.api_host, settings.api_port))
        reg_sock = bound.enter_context(
            bind_socket("regulator API", settings.regulator_host, settings.regulator_port)
        )
        member.bind()
        bound.pop_all()
    member.prepare()  # ctx.federation, before the apps
    dsp_sock = None
    if settings.dsp_port is not None:  # bound before anything serves, like the others
        dsp_sock = bind_socket("DSP", settings.dsp_host, settings.dsp_port)
    grace = settings.shutdown_grace_s
    with collector_paused():  # routes and their models, built once (util.startup)
        api = https_server(create_app(ctx), api_cert, api_key, grace=grace)
        regulator = https_server(create_regulator_app(ctx), member_cert, member_key, grace=grace)
    await member.start()
    tasks: list[asyncio.Task[None]] = []
    dsp: _Uvicorn | None = None
    try:
        tasks.append(await start_listener(api, api_sock))
        tasks.append(await start_listener(regulator, reg_sock))
        if dsp_sock is not None:
            dsp = await start_dsp(ctx, dsp_sock)
            tasks.append(await start_listener(dsp, dsp_sock))
    except BaseException:
        api.should_exit = regulator.should_exit = True
        if dsp is not None:
            dsp.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await member.stop(0)
        raise
    ctx.serving = True  # every listener is up (``/startupz``)
    if ctx.dsp_transfers is not None:  # the providers' answers can land now
        ctx.dsp_transfers.resume_after_restart()
    # Everything loaded so far (modules, apps, stores, certificates) lives as long as the
    # node: move it out of the collector's view, so a full collection during a transfer
    # (which allocates many short-lived objects) does not walk it again each time.
    gc.freeze()
    member.follow()
    assert member.port is not None
    runtime = {
        "pid": os.getpid(),
        "name": settings.name,
        "member_id": ctx.keys.identity.member_id,
        "role": settings.role,
        **runtime_record(
            settings, member.port, api_sock.getsockname()[1], reg_sock.getsockname()[1]
        ),
        "dsp": None
        if dsp_sock is None
        else https_url(settings.dsp_host, dsp_sock.getsockname()[1]),
        "started_at": time.time(),
    }
    write_atomic(runtime_file(settings.directory), json.dumps(runtime, indent=2).encode())
    logger.info(
        "node %s (%s) serving gRPC on %s, operator API on %s, regulator API on %s; database %s",
        settings.name,
        settings.role,
        runtime["grpc"],
        runtime["api"],
        runtime["regulator"],
        ctx.store.url,  # the password hidden (connector.storage.safe_url)
    )
    # the event loop runs its transactions on one connection kept for it (the
    # negotiations' saves and loads; `connector.held_connection`)
    held_connection.hold(ctx.store.engine)
    try:
        await stop.wait()
    finally:
        logger.info("node %s shutting down (grace %.1fs)", settings.name, settings.shutdown_grace_s)
        ctx.serving = False
        api.should_exit = regulator.should_exit = True
        if dsp is not None:
            dsp.should_exit = True
        await member.stop(settings.shutdown_grace_s)
        await asyncio.gather(*tasks)
        if ctx.dsp_transfers is not None:  # its pulls end before its database closes
            await ctx.dsp_transfers.close()
        await ctx.peers.close()
        held_connection.release(ctx.store.engine)  # before ctx.close() disposes the engine
        runtime_file(settings.directory).unlink(missing_ok=True)
        logger.info("node %s stopped", settings.name)


def published_dsp(settings: NodeSettings, base: str) -> str | None:
    """The ``host:port`` this node publishes as its DSP endpoint in the member directory:
    that of ``advertise_dsp``, or of the listener's own host; none for a listener bound
    to a wildcard without ``advertise_dsp`` (its loopback form is of no use elsewhere),
    and none without a directory to publish in."""
    if not settings.authority_url:
        return None
    if not settings.advertise_dsp and settings.dsp_host in LOOPBACK_OF:
        logger.warning(
            "DSP listens on %s without advertise_dsp: its address is not published in the "
            "member directory, and providers that follow it refuse this node's callbacks",
            settings.dsp_host,
        )
        return None
    origin = https_origin(base)
    return None if origin is None else host_port(*origin)


async def start_dsp(
    ctx: NodeContext,
    sock: socket.socket,
    tls: tuple[Path, Path, str | None] | None = None,
    wrap: Callable[[Any], Any] | None = None,
) -> _Uvicorn:
    """The DSP listener's server (mutual TLS with the space's certificates) and the DSP
    consumer and outbox sender it brings (`node.dsp`). ``tls``: the member certificate,
    key and key password to present, else the node's files (a managed host hands a
    tenant's as transient files: the server and client load them before this returns
    and `start_listener` is awaited); ``wrap``: around the app (a host's quota gate for
    its tenant)."""
    from qdspace.node.dsp.app import DspBinding, body_of, create_dsp_app
    from qdspace.node.dsp.auth import PeerCertH11
    from qdspace.node.dsp.callbacks import CallbackCheck
    from qdspace.node.dsp.caps import DspCallCaps
    from qdspace.node.dsp.client import OUTBOX_KIND, DspHttp
    from qdspace.node.dsp.consumer import DspConsumer
    from qdspace.node.dsp.edr import DataTokens
    from qdspace.node.dsp.transfer_consumer import DspTransfers
    from qdspace.node.dsp.transfer_process import DspTransferMoves
    from qdspace.node.dsp.transfers import transfer_router
    from qdspace.node.rpc.auth import PeerAuthenticator
    from qdspace.node.rpc.contracts_jobs import client_of

    runtime = ctx.contracts
    if runtime is None:
        raise NodeError("the DSP listener needs the node's contract machinery")
    if ctx.dsp_transfers is not None:  # a listener started before (a resumed tenant's)
        await ctx.dsp_transfers.close()  # (closed at its stop: nothing to wait for then)
    layout, settings = ctx.settings.layout, ctx.settings
    # what other members reach: the data addresses and callbacks this node hands out
    base = settings.advertise_dsp or https_url(settings.dsp_host, sock.getsockname()[1])
    authenticator = PeerAuthenticator(ctx.revocations, ctx.peers.pinned)
    cert, key, password = tls if tls is not None else (layout.tls_cert, layout.tls_key, None)
    http = DspHttp(
        ctx.keys.identity.member_id,
        ctx.keys.signing_key,
        cert,
        key,
        layout.ca_cert,
        standing=authenticator.check_standing,  # the servers it calls, as its callers
        key_password=password,
    )
    _client, outbox = client_of(ctx)
    outbox.senders[OUTBOX_KIND] = http.send_queued
    access = runtime.access  # the same check as the gRPC catalog's and negotiations'
    # consumers' callbacks only where their members publish DSP, or, with static peers,
    # on the host a peer is configured at (`node.dsp.callbacks`)
    if settings.authority_url:
        callbacks = CallbackCheck(listed=ctx.peers.listed)
    else:
        callbacks = CallbackCheck(static=ctx.peers.static_address)
    binding = DspBinding(runtime, authenticator, base, outbox.kick, access, callbacks)
    ctx.dsp_endpoint = published_dsp(settings, base)
    ctx.dsp = DspConsumer(runtime, http, base)
    tokens = DataTokens(ctx.keys.signing_key, settings.dsp_token_ttl_s)
    moves = DspTransferMoves(runtime, tokens, base)
    ctx.dsp_transfers = transfers = DspTransfers(moves, http, outbox.kick)
    draining = asyncio.Event()  # set when the listener stops: live data streams end
    routes = transfer_router(authenticator, transfers, body_of, outbox.kick, draining, callbacks)
    limiter = call_limiter(ctx)  # one count with the gRPC listener's
    app: Any = DspCallCaps(create_dsp_app(binding, [routes]), limiter, ctx.metrics)
    config = uvicorn.Config(
        wrap(app) if wrap is not None else app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=PeerCertH11,
        proxy_headers=False,  # as `https_server`'s
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_keyfile_password=password,
        ssl_ca_certs=str(layout.ca_cert),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
    )
    return _Uvicorn(config, draining)


def run_node(directory: Path) -> None:
    """Load, wire and serve a node until SIGTERM/SIGINT."""
    hold_recursion_limit()  # before any peer's byte is read (util.recursion)
    settings = NodeSettings.load(directory)
    ctx = build_context(settings)  # refuses to start without a revocation list
    try:
        ctx.revocations.check_fresh()
    except StaleRevocationList as exc:  # start anyway: a refreshed file is picked up live
        logger.error("%s", exc)
    ledger = attach_anchoring(ctx)

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
