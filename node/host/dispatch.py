"""The host's one operator listener: the bearer token picks whose API answers.

Every tenant keeps its own operator token, and its staff use the ordinary CLI and
`OperatorClient` against the host's URL with it: the dispatcher finds the tenant by the
token (a SHA-256 lookup, then a constant-time comparison) and hands the request, as it
came, to that tenant's own FastAPI app (`node.api.app.create_app`), whose own gate checks
the token once more. No path, header or body can name another tenant: the token is the
only selector, so tenant A's token can reach tenant A's routes only.

The host operator's token reaches the host-management app only (list, status, start a
tenant added while the host runs, open one again after a renewal, suspend, resume, and a
tenant's purge and removal: `leaving`): it shows how tenants are hosted (member id,
role, port, state, counts of a purge) and no tenant's data. A suspended
tenant's token is answered 423 with a problem naming the suspension; an unknown or
missing token 401, as a node answers.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from qdspace.node import faults
from qdspace.node.api.bodies import Body
from qdspace.node.api.gate import (
    OPEN_PATHS,
    BearerGate,
    CredentialRejected,
    bearer_token,
    send_problem,
)
from qdspace.node.api.problems import install_problem_handlers
from qdspace.node.host import leaving
from qdspace.node.host.errors import HostError, QuotaExceeded, QuotaValueRefused
from qdspace.node.host.quotas import QuotaSettings
from qdspace.node.host.runtime import HostedTenant, HostRuntime, as_member

log = logging.getLogger("node.host")

UNKNOWN_TOKEN = "operator token required (Authorization: Bearer ...)"
#: the host-management routes (host token only)
HOST_PREFIX = "/host/v1"


class TenantPublic(BaseModel):
    name: str
    member_id: str
    role: str
    status: str  # serving | suspended | failed
    grpc_port: int
    regulator_port: int = 0  # 0: its regulator API is not served
    dsp_port: int | None = None  # its Dataspace Protocol listener's, when it has one
    certificate_not_after: str | None = None  # when its member certificate ends (renew before)
    reason: str = ""
    error: str = ""
    added_at: str
    changed_at: str
    own_quota: bool = False  # False: the host's defaults
    quota: dict[str, float | int | None] = Field(default_factory=dict)  # null: no limit
    #: rows, storage (its database and model files): measured when listed, if stale
    use: dict[str, int | None] = Field(default_factory=dict)


class QuotaChange(Body):
    """New values of some quotas (null: no limit), or ``reset``: the host's defaults."""

    changes: dict[str, float | int | None] = Field(default_factory=dict, max_length=10)
    reset: bool = False


class Suspension(Body):
    reason: str = Field("", max_length=500)


class Confirmation(Body):
    """A purge or removal cannot be undone: the body names the tenant it means."""

    confirm: str = Field(max_length=100)


class PurgeCounts(BaseModel):
    agreements: int
    terminated: int
    receipts: int
    rows_deleted: int
    failures: list[str]
    undelivered: int


class Backlog(BaseModel):
    """What a leaving tenant still owes: messages to its peers, records to its chain."""

    undelivered: int
    unanchored: int = 0


class RemovalPublic(BaseModel):
    name: str
    member_id: str
    purged: bool  # False: it had been exported (nothing purged, nothing sent)
    database: str = ""  # its PostgreSQL database, left in place (no password)


class HostStatus(BaseModel):
    tenants: int
    serving: int
    suspended: int
    failed: int
    started_at: float


def create_host_app(runtime: HostRuntime, host_token: str, started_at: float) -> FastAPI:
    """The host operator's API: tenants and their state, never their data."""
    app = FastAPI(
        title="qdspace host",
        version="0.1.0",
        description="Managed host API.",
        docs_url=None,  # FastAPI's doc pages load a CDN's script, here on the tenants' origin
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_middleware(BearerGate, operator_token=host_token)

    def measured(tenant: HostedTenant, *, stale_ok: bool = False) -> TenantPublic:
        """The tenant, its usage measured again if stale (blocking: for the routes run in
        the thread pool): what it holds now, the model versions it wrote since its last
        ingest too. A measure that fails leaves the last one shown. ``stale_ok`` (the
        list of every tenant): measured only if never measured, as a measure counts a
        tenant's rows and walks its folders, and the list asks it of each in turn."""
        admission = tenant.admission
        if admission is not None and not (stale_ok and admission.usage is not None):
            try:
                admission.refresh()
            except Exception as exc:  # its database gone meanwhile: not the caller's fault
                log.warning("tenant %s: its usage was not measured: %s", tenant.name, exc)
        return TenantPublic(**tenant.public())

    def tenants() -> list[TenantPublic]:
        return [measured(t, stale_ok=True) for t in list(runtime.tenants.values())]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{HOST_PREFIX}/status", response_model=HostStatus)
    def status() -> HostStatus:
        states = [t.status for t in runtime.tenants.values()]
        return HostStatus(
            tenants=len(states),
            serving=states.count("serving"),
            suspended=states.count("suspended"),
            failed=states.count("failed"),
            started_at=started_at,
        )

    @app.get(f"{HOST_PREFIX}/tenants", response_model=list[TenantPublic])
    def tenant_list() -> list[TenantPublic]:
        return tenants()

    @app.get(f"{HOST_PREFIX}/tenants/{{name}}", response_model=TenantPublic)
    def tenant_one(name: str) -> TenantPublic:
        return measured(runtime.get(name))

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/start", response_model=TenantPublic)
    async def start(name: str) -> TenantPublic:
        """Serve a tenant added since the host started (``tenant add`` calls it)."""
        return TenantPublic(**(await runtime.add(name)).public())

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/reopen", response_model=TenantPublic)
    async def reopen(name: str) -> TenantPublic:
        """Open a tenant again from its files (``tenant renew`` calls it)."""
        return TenantPublic(**(await runtime.reopen(name)).public())

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/suspend", response_model=TenantPublic)
    async def suspend(name: str, body: Suspension | None = None) -> TenantPublic:
        reason = body.reason if body is not None else ""
        return TenantPublic(**(await runtime.suspend(name, reason)).public())

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/resume", response_model=TenantPublic)
    async def resume(name: str) -> TenantPublic:
        return TenantPublic(**(await runtime.resume(name)).public())

    @app.put(f"{HOST_PREFIX}/tenants/{{name}}/quota", response_model=TenantPublic)
    async def quota(name: str, body: QuotaChange) -> TenantPublic:
        """Change a tenant's quota, live and recorded (checked as on the command line)."""
        tenant = runtime.get(name)
        if body.reset:
            if body.changes:
                raise QuotaValueRefused("give new quota values or reset, not both")
            chosen = None
        else:
            current = runtime.quota_of(tenant.record)
            chosen = QuotaSettings.of(current.with_changes(body.changes))
        return TenantPublic(**(await runtime.set_quota(name, chosen)).public())

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/purge", response_model=PurgeCounts)
    async def purge(name: str, body: Confirmation) -> PurgeCounts:
        """The tenant leaves: its purge (see `leaving`); counts only."""
        leaving.check_confirmed(name, body.confirm)
        return PurgeCounts(**(await leaving.purge(runtime, name)))

    @app.get(f"{HOST_PREFIX}/tenants/{{name}}/outbox", response_model=Backlog)
    async def outbox(name: str) -> Backlog:
        return Backlog(**(await leaving.outbox(runtime, name)))

    @app.post(f"{HOST_PREFIX}/tenants/{{name}}/remove", response_model=RemovalPublic)
    async def remove(name: str, body: Confirmation) -> RemovalPublic:
        """Purge (again), refuse while receipts are owed, then delete the tenant."""
        return RemovalPublic(**(await leaving.remove(runtime, name, body.confirm)).__dict__)

    return app


class HostDispatcher:
    """ASGI: the request goes to the app its bearer token belongs to (see the module)."""

    def __init__(self, runtime: HostRuntime, host_token: str, host_app: ASGIApp) -> None:
        self.runtime = runtime
        self._host_token = host_token.encode()
        self.host_app = host_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":  # no app here needs startup or shutdown
                await _lifespan(receive, send)
            return
        path = scope.get("path", "")
        try:
            token = bearer_token(scope.get("headers", []))
        except CredentialRejected as exc:
            if path in OPEN_PATHS:  # health without a token: the host's own
                await self.host_app(scope, receive, send)
            else:
                await send_problem(send, 401, str(exc), path)
            return
        if hmac.compare_digest(token.encode(), self._host_token):
            await self.host_app(scope, receive, send)
            return
        tenant = self.runtime.by_token(token)
        if tenant is None:
            name = self.runtime.reopening(token)
            if name is not None:  # closed for a second (a renewal): not an unknown token
                why = f"tenant {name} is being opened again by its host: try again shortly"
                await send_problem(send, 503, why, path, 1)
                return
            await send_problem(send, 401, UNKNOWN_TOKEN, path)
            return
        with as_member(tenant.name):  # its log lines name it
            try:
                app = self.runtime.check_serving(tenant)
                release = (
                    tenant.admission.admit_call(stream=False, staff=True)
                    if tenant.admission
                    else None
                )
            except QuotaExceeded as exc:  # before the tenant's app does any work
                status = faults.http_status(exc)
                await send_problem(send, status, str(exc), path, exc.retry_after_s)
                return
            except HostError as exc:
                await send_problem(send, faults.http_status(exc), str(exc), path)
                return
            try:
                await app(scope, receive, send)
            finally:
                if release is not None:
                    release()


class SuspensionGate:
    """In front of a tenant's own listener (its regulator API): a suspended tenant
    answers 423 with the suspension, as its operator API does."""

    def __init__(self, app: ASGIApp, runtime: HostRuntime, tenant: HostedTenant) -> None:
        self.app = app
        self.runtime = runtime
        self.tenant = tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.runtime.check_serving(self.tenant)
            except HostError as exc:
                await send_problem(send, faults.http_status(exc), str(exc), scope.get("path", ""))
                return
        with as_member(self.tenant.name):
            await self.app(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
