"""A hosted tenant's own listeners beside its gRPC port: its regulator API and its
Dataspace Protocol listener, each on a port of its own, presenting the tenant's member
certificate as a node's do.

Why here: the host's runtime (`node.host.runtime`) opens, starts, suspends and stops
tenants; how each listener is bound and handed the tenant's key is the same small
problem twice, and it kept that file past the size the house keeps. A tenant's TLS key
is never written in plaintext (its key files are sealed, `node.host.sealing`): the TLS
libraries load keys only from files, so each listener gets them as transient files,
encrypted under a one-time password (`identity.keyfiles.transient_key_file`), loaded
before the block ends (`node.run.start_listener` returns once the server started).

The regulator API keeps listening while the tenant is suspended and answers 423 through
the host's suspension gate. The DSP listener runs only while the tenant serves: a
suspension stops it, so its open data streams end as the tenant's gRPC streams do, and
a resume starts it again on the same port. Its requests count against the tenant's
quotas as its gRPC calls do (`TenantQuotaGate`: the rate, the calls and streams in
flight), besides the per-member caps every node's DSP listener keeps
(`node.dsp.caps`), and run as the tenant's (`node.logs.MEMBER`): their log lines name
it, and their worker threads are taken within its share (`node.host.workers`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qdspace.connector import dsp_codec as codec
from qdspace.node.dsp.caps import drain_body, error_kind
from qdspace.node.host.errors import QuotaExceeded
from qdspace.node.logs import MEMBER

if TYPE_CHECKING:
    from qdspace.node.host.admission import TenantAdmission
    from qdspace.node.host.runtime import HostedTenant, HostRuntime

logger = logging.getLogger("node.host")


async def start_regulator_listener(runtime: HostRuntime, tenant: HostedTenant) -> None:
    """The tenant's regulator API on its own port, behind the host's suspension gate."""
    from qdspace.node.api.regulator_app import create_regulator_app
    from qdspace.node.host.dispatch import SuspensionGate
    from qdspace.node.identity.keyfiles import transient_key_file
    from qdspace.node.listeners import bind_socket
    from qdspace.node.run import https_server, start_listener

    ctx = tenant.ctx
    assert ctx is not None
    settings = ctx.settings
    sock = bind_socket(
        f"regulator API of {tenant.name}", settings.regulator_host, settings.regulator_port
    )
    app = SuspensionGate(create_regulator_app(ctx), runtime, tenant)
    with transient_key_file(ctx.keys.cert_pem, ctx.keys.tls_key) as (cert, key, password):
        server = https_server(
            app,
            cert,
            key,
            lifespan="off",
            key_password=password,
            grace=settings.shutdown_grace_s,
        )
        tenant.regulator_task = await start_listener(server, sock)
    tenant.regulator = server
    tenant.regulator_port = sock.getsockname()[1]


async def start_dsp_listener(tenant: HostedTenant) -> None:
    """The tenant's DSP listener (`node.run.start_dsp`: the provider's endpoints, its
    consumer and its outbox sender), when its settings name a DSP port; none twice."""
    ctx = tenant.ctx
    assert ctx is not None
    settings = ctx.settings
    if settings.dsp_port is None or tenant.dsp is not None:
        return
    from qdspace.node.identity.keyfiles import transient_key_file
    from qdspace.node.listeners import bind_socket
    from qdspace.node.run import start_dsp, start_listener

    sock = bind_socket(f"DSP of {tenant.name}", settings.dsp_host, settings.dsp_port)
    try:
        with transient_key_file(ctx.keys.cert_pem, ctx.keys.tls_key) as (cert, key, password):
            admission = tenant.admission
            server = await start_dsp(
                ctx,
                sock,
                (cert, key, password),
                wrap=None if admission is None else lambda app: TenantQuotaGate(app, admission),
            )
            tenant.dsp_task = await start_listener(server, sock)
    except BaseException:
        sock.close()
        raise
    tenant.dsp = server
    logger.info("tenant %s serving DSP on %s", tenant.name, sock.getsockname()[1])


async def stop_dsp_listener(tenant: HostedTenant) -> None:
    """Stop the tenant's DSP listener, if it runs: its live data streams end (it drains)."""
    if tenant.dsp is None:
        return
    tenant.dsp.should_exit = True
    if tenant.dsp_task is not None:
        await tenant.dsp_task
    tenant.dsp = tenant.dsp_task = None


class TenantQuotaGate:
    """ASGI middleware: each DSP request takes the tenant's rate token and a slot (a
    data-plane read a stream slot, any other request a call slot), as the tenant's gRPC
    interceptor does; over quota, a 429 DSP error naming the quota, with Retry-After."""

    def __init__(self, app: ASGIApp, admission: TenantAdmission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        try:
            tls = scope.get("extensions", {}).get("tls", {})
            release = self.admission.admit_call(
                stream=path.startswith("/data/"), member=tls.get("client_cert_der") or b""
            )
        except QuotaExceeded as exc:
            await drain_body(receive, Headers(scope=scope).get("content-length"))
            await _over_quota(exc, path)(scope, receive, send)
            return
        token = MEMBER.set(self.admission.tenant)  # its worker threads are its share's
        try:
            await self.app(scope, receive, send)
        finally:
            MEMBER.reset(token)
            release()


def _over_quota(exc: QuotaExceeded, path: str) -> Any:
    headers = {"connection": "close"}
    if exc.retry_after_s:
        headers["retry-after"] = str(exc.retry_after_s)
    body = codec.error(error_kind(path), "429", str(exc))
    return JSONResponse(body, status_code=429, headers=headers)
