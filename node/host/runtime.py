"""The tenants of a running host: opened side by side, served side by side, suspended alone.

Each tenant is what a self-hosted node is minus its HTTP listeners: a `NodeContext` built
from its own directory (its keys read through its sealed key files, its own database),
a `node.serving.MemberServer` on its own port, and its operator API app (served by the
host's one listener, `dispatch`). One event loop carries them all.

Isolation is the rule of this module: every step of one tenant (opening its database,
binding its port, starting, suspending) is tried on its own, and a failure is logged,
recorded on that tenant (``error``, shown to the host operator) and skipped; the other
tenants open and serve regardless. A suspension is written to the registry before it
takes effect, so it holds across restarts.

One lifecycle step of a tenant at a time: adding, suspending, resuming, reopening,
removing (`leaving`) and stopping a tenant each hold its lock (`HostRuntime.lifecycle`,
kept by name: a reopen replaces the tenant's object, and holds the lock from closing the
old one to serving the new one) and look the tenant up only once they hold it. Otherwise
a step would act on an object another had replaced meanwhile: a removal racing a
``tenant renew`` once deleted the tenant's registry entry and directory while the
renewed instance went on serving, out of the operator's reach; a suspension racing it was
recorded while the renewed instance served. The registry, the list and what serves agree.

At a start the tenants are opened side by side (`opening`): one whose database does not
answer waits its connect timeout alone. They are listed, and their failures logged, in
the registry's order, whichever opened first.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdspace.node.api.caller_paths import TENANT_FILES
from qdspace.node.config import NodeSettings
from qdspace.node.context import build_context
from qdspace.node.host.admission import TenantAdmission, kept_folders, measure_usage
from qdspace.node.host.config import HostLayout, HostSettings
from qdspace.node.host.errors import (
    HostError,
    TenantBusy,
    TenantExists,
    TenantSuspended,
    UnknownTenant,
)
from qdspace.node.host.hosted import HostedTenant as HostedTenant
from qdspace.node.host.hosted import as_member as as_member
from qdspace.node.host.hosted import suspension_message as suspension_message
from qdspace.node.host.hosted import token_digest as token_digest
from qdspace.node.host.names import check_name
from qdspace.node.host.opening import open_side_by_side
from qdspace.node.host.quotas import Quota, QuotaSettings
from qdspace.node.host.refusal import RefusingServer
from qdspace.node.host.registry import Registry, TenantRecord, TenantState
from qdspace.node.host.sealing import MasterKey
from qdspace.node.host.tenant_listeners import (
    start_dsp_listener,
    start_regulator_listener,
    stop_dsp_listener,
)
from qdspace.node.host.tenants import TenantSettings, tenant_key_files
from qdspace.node.identity.keyfiles import KeyFiles
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.node.serving import MemberServer, attach_anchoring
from qdspace.util.startup import collector_paused

if TYPE_CHECKING:
    from starlette.types import ASGIApp


logger = logging.getLogger("node.host")


class HostRuntime:
    """Opens, serves, suspends, resumes and stops the tenants of one host directory."""

    def __init__(self, directory: Path, settings: HostSettings, master: MasterKey) -> None:
        self.files = HostLayout(directory)
        self.settings = settings
        self.master = master
        self.registry = Registry(directory)
        self.tenants: dict[str, HostedTenant] = {}
        self._by_token: dict[bytes, HostedTenant] = {}
        #: one tenant added while serving at a time; none once the host is stopping
        self._adding = asyncio.Lock()
        self._stopping = False
        #: token digest -> name of a tenant closed to be opened again (`reopen`)
        self._reopening: dict[bytes, str] = {}
        #: each tenant's lifecycle lock, by name (`lifecycle`)
        self._lifecycles: dict[str, asyncio.Lock] = {}

    def lifecycle(self, name: str) -> asyncio.Lock:
        """The lock every lifecycle step of tenant `name` holds (see the module): kept by
        name, so it outlives the tenant objects a reopen replaces. Look the tenant up
        (`get`) once holding it."""
        return self._lifecycles.setdefault(check_name(name), asyncio.Lock())

    # -- opening (blocking: keys, databases) ------------------------------------------

    def open_all(self) -> None:
        """Open every tenant of the registry; one that fails is recorded and skipped.
        Files and tokens are read in the registry's order (of two tenants with one token
        the later is refused), databases side by side (`opening`), failures logged in
        the registry's order."""
        tenants = [HostedTenant(record) for record in self.registry.tenants()]
        failures: dict[str, Exception] = {}
        opens = []
        for tenant in tenants:
            self.tenants[tenant.name] = tenant
            try:
                with as_member(tenant.name):
                    settings, key_files = self._prepare(tenant)
            except Exception as exc:  # isolation: this tenant only
                failures[tenant.name] = exc
                continue
            opens.append((tenant, partial(self._open_as_member, tenant, settings, key_files)))
        done = open_side_by_side([one for _, one in opens])
        failures |= {t.name: exc for (t, _), exc in zip(opens, done, strict=True) if exc}
        for tenant in tenants:
            failure = failures.get(tenant.name)
            if failure is not None:
                tenant.error = f"{type(failure).__name__}: {failure}"
                logger.error("tenant %s: not serving: %s", tenant.name, tenant.error)

    def _open_as_member(
        self, tenant: HostedTenant, settings: NodeSettings | None = None, key_files: Any = None
    ) -> None:
        """Open the tenant (``settings``, ``key_files``: as `_prepare` read them, or read
        now), its log lines naming it."""
        with as_member(tenant.name):
            if settings is None or key_files is None:
                settings, key_files = self._prepare(tenant)
            self._open(tenant, settings, key_files)

    def _prepare(self, tenant: HostedTenant) -> tuple[NodeSettings, KeyFiles]:
        """The tenant's settings (its sealed database URL in) and key files, its operator
        token known (`_know_token`): its files only, no database yet."""
        directory = self.files.tenant(tenant.name)
        settings: NodeSettings = TenantSettings.load(directory)
        key_files = tenant_key_files(self.files, self.master, tenant.name)
        self._know_token(tenant, key_files, settings)
        sealed_url = self.files.sealed_db_url(tenant.name)
        if sealed_url.exists():  # its own PostgreSQL database or schema
            db_url = key_files.read(sealed_url, "database URL").decode().strip()
            settings = settings.model_copy(update={"db_url": db_url})
        return settings, key_files

    def _open(self, tenant: HostedTenant, settings: NodeSettings, key_files: KeyFiles) -> None:
        directory = self.files.tenant(tenant.name)
        ctx = build_context(settings, key_files)
        tenant.ctx = ctx
        store, contracts = ctx.store, ctx.contracts
        mirror = contracts.store if contracts is not None else None
        kept = kept_folders(ctx.layout)  # its model versions are on the host's disk too
        tenant.admission = TenantAdmission(
            tenant.name,
            self.quota_of(tenant.record),
            lambda: measure_usage(store, mirror, kept),
            ctx.disk,  # the node's free disk (the host's, shared), asked before the quotas
        )
        ctx.ingest_admission = tenant.admission
        ctx.caller_files = directory / TENANT_FILES  # the only files its staff may name
        if contracts is not None:  # rows its providers send count too
            contracts.received_room = tenant.admission
        try:
            ctx.revocations.check_fresh()
        except StaleRevocationList as exc:  # as a node: a refreshed file is picked up live
            logger.error("tenant %s: %s", tenant.name, exc)
        tenant.ledger = attach_anchoring(ctx)

    def _know_token(self, tenant: HostedTenant, key_files: Any, settings: NodeSettings) -> None:
        """Take the tenant's operator token before anything else of it is opened: a tenant
        that then fails to open (a broken database) answers its staff 503 "not serving",
        not 401 as if their token were wrong. A token another tenant holds is refused
        (`HostError`) before anything of this one is opened."""
        try:
            token = key_files.read(settings.operator_token_path, "operator token")
        except Exception:  # the open that follows fails, saying why
            return
        text = token.decode().strip()
        digest = token_digest(text)
        if self._by_token.get(digest, tenant) is not tenant:
            raise HostError(f"its operator token is tenant {self._by_token[digest].name}'s too")
        tenant.token_digest, tenant.token = digest, text
        self._by_token[digest] = tenant

    # -- serving ----------------------------------------------------------------------

    async def start_all(self) -> None:
        for tenant in self.tenants.values():
            if tenant.ctx is None or tenant.error:  # it failed to open
                continue
            try:
                with as_member(tenant.name):
                    await self._start(tenant)
            except Exception as exc:  # isolation: a port in use stops this tenant only
                tenant.error = f"{type(exc).__name__}: {exc}"
                logger.error("tenant %s: not serving: %s", tenant.name, tenant.error)

    async def _start(self, tenant: HostedTenant) -> None:
        ctx = tenant.ctx
        assert ctx is not None
        admission = [tenant.admission.interceptor()] if tenant.admission is not None else []
        tenant.member = MemberServer(ctx, admission)
        if ctx.settings.regulator_port:
            await start_regulator_listener(self, tenant)
        if tenant.suspended:
            tenant.member.port = ctx.settings.grpc_port
            await self._refuse(tenant)
            return
        tenant.member.bind()
        tenant.member.prepare()
        await start_dsp_listener(tenant)  # before the entry is published: it names the endpoint
        await tenant.member.start()
        ctx.serving = True
        if ctx.dsp_transfers is not None:  # its providers' answers can land now
            ctx.dsp_transfers.resume_after_restart()
        tenant.member.follow()
        logger.info(
            "tenant %s (%s, %s) serving gRPC on %s:%s",
            tenant.name,
            ctx.settings.role,
            ctx.keys.identity.member_id,
            ctx.settings.grpc_host,
            tenant.member.port,
        )

    async def add(self, name: str) -> HostedTenant:
        """Serve a tenant added to the registry while the host runs (``tenant add`` asks
        for it), opened and started as ``host start`` does, without stopping the others;
        one that fails to open or start is reported (``failed``, with the reason) as at
        a start. A tenant this host already serves is a `TenantExists`."""
        async with self.lifecycle(name):
            return await self._add(name)

    async def _add(self, name: str) -> HostedTenant:
        """`add` (hold ``lifecycle(name)``)."""
        async with self._adding:
            if self._stopping:
                raise HostError("the host is stopping: the tenant is served from its next start")
            if check_name(name) in self.tenants:
                raise TenantExists(f"tenant {name} is already served by this host")
            tenant = HostedTenant(self.registry.get(name))
            try:
                await asyncio.to_thread(self._open_as_member, tenant)
                with as_member(tenant.name):
                    await self._start(tenant)
            except Exception as exc:  # isolation: this tenant only
                tenant.error = f"{type(exc).__name__}: {exc}"
                logger.error("tenant %s: not serving: %s", tenant.name, tenant.error)
            self.tenants[tenant.name] = tenant
            logger.info("tenant %s added while serving: %s", tenant.name, tenant.status)
            return tenant

    async def reopen(self, name: str) -> HostedTenant:
        """Stop a tenant, close it and open and start it again from its directory (a
        renewed certificate is served, and published, from then on); the others serve on.
        Its lifecycle lock is held throughout: a suspension or removal asked meanwhile
        applies to the tenant as reopened."""
        async with self.lifecycle(name):
            tenant = self.get(name)
            digest = tenant.token_digest
            self._reopening[digest] = tenant.name  # its staff are told to wait, not "unknown"
            try:
                with as_member(name):
                    await self.drop(tenant)
                return await self._add(name)
            finally:
                self._reopening.pop(digest, None)

    def reopening(self, token: str) -> str | None:
        """The tenant whose token this is, while it is being opened again (else None)."""
        return self._reopening.get(token_digest(token))

    async def _refuse(self, tenant: HostedTenant) -> None:
        assert tenant.ctx is not None and tenant.member is not None
        port = tenant.member.port if tenant.member.port is not None else 0
        settings = tenant.ctx.settings
        message = suspension_message(tenant.name, tenant.record.reason)
        tenant.refusing = RefusingServer(tenant.ctx.keys, settings.grpc_host, port, message)
        tenant.member.port = tenant.refusing.port
        await tenant.refusing.start()

    def get(self, name: str) -> HostedTenant:
        """The tenant served as `name`; `TenantBusy` while it is being opened again
        (`reopen`), `UnknownTenant` when there is none."""
        tenant = self.tenants.get(check_name(name))
        if tenant is None:
            if name in self._reopening.values():
                raise TenantBusy(f"tenant {name} is being opened again: try again in a moment")
            raise UnknownTenant(f"no tenant {name!r} on this host")
        return tenant

    async def suspend(self, name: str, reason: str = "") -> HostedTenant:
        """Stop the tenant's peer side (open streams and its DSP transfers end now),
        answer its port with UNAVAILABLE and its operator API with 423; recorded first,
        so it holds."""
        async with self.lifecycle(name):
            tenant = self.get(name)
            with as_member(name):
                return await self._suspend(tenant, reason)

    async def _suspend(self, tenant: HostedTenant, reason: str) -> HostedTenant:
        tenant.record = self.registry.set_state(tenant.name, TenantState.SUSPENDED, reason)
        if tenant.error or tenant.ctx is None or tenant.member is None:
            return tenant  # not serving anyway; the state applies from the next start
        if tenant.refusing is not None:  # already suspended: a new reason only
            await tenant.refusing.stop()
            tenant.refusing = None
        else:
            tenant.ctx.serving = False
            await stop_dsp_listener(tenant)
            await tenant.member.stop(0)
            await tenant.close_transfers()
            await tenant.ctx.peers.close()
        await self._refuse(tenant)
        logger.warning("tenant %s suspended%s", tenant.name, f": {reason}" if reason else "")
        return tenant

    async def resume(self, name: str) -> HostedTenant:
        async with self.lifecycle(name):
            tenant = self.get(name)
            with as_member(name):
                return await self._resume(tenant)

    async def _resume(self, tenant: HostedTenant) -> HostedTenant:
        tenant.record = self.registry.set_state(tenant.name, TenantState.ACTIVE)
        if tenant.error or tenant.ctx is None or tenant.member is None:
            return tenant
        if tenant.refusing is None:
            return tenant  # it was serving
        await tenant.refusing.stop()
        tenant.refusing = None
        tenant.member.bind()
        await start_dsp_listener(tenant)
        await tenant.member.start()
        tenant.ctx.serving = True
        if tenant.ctx.dsp_transfers is not None:  # its pulls, stopped by the suspension
            tenant.ctx.dsp_transfers.resume_after_restart()
        tenant.member.follow()
        logger.warning("tenant %s resumed", tenant.name)
        return tenant

    # -- quotas -----------------------------------------------------------------------

    def quota_of(self, record: TenantRecord) -> Quota:
        """The tenant's own quota, or the host's defaults."""
        return (record.quota or self.settings.quota).quota()

    async def set_quota(self, name: str, quota: QuotaSettings | None) -> HostedTenant:
        """A tenant's new quota (None: the host's defaults): recorded, then live."""
        async with self.lifecycle(name):
            tenant = self.get(name)
            tenant.record = self.registry.set_quota(tenant.name, quota)
            if tenant.admission is not None:
                tenant.admission.change(self.quota_of(tenant.record))
        logger.info("tenant %s: quota now %s", name, self.quota_of(tenant.record).as_dict())
        return tenant

    # -- the operator listener's lookup --------------------------------------------------

    def by_token(self, token: str) -> HostedTenant | None:
        """The tenant whose operator token this is (looked up by its hash, then compared
        in constant time), or None."""
        tenant = self._by_token.get(token_digest(token))
        if tenant is None or not tenant.token:
            return None
        if not hmac.compare_digest(token.encode(), tenant.token.encode()):
            return None
        return tenant

    def check_serving(self, tenant: HostedTenant) -> ASGIApp:
        """The tenant's app, or the reason it cannot answer (`TenantSuspended`, `HostError`)."""
        if tenant.suspended:
            raise TenantSuspended(suspension_message(tenant.name, tenant.record.reason))
        if tenant.error or tenant.ctx is None:  # (its staff are not told the host's inside)
            why = "its host is looking into it" if tenant.error else "it is starting"
            raise HostError(f"tenant {tenant.name} is not serving: {why}")
        return self.app_of(tenant)

    def app_of(self, tenant: HostedTenant) -> ASGIApp:
        """The tenant's operator API app, made on first use.

        Building a FastAPI app (some fifty routes) takes longer than opening the tenant
        itself, so ``host start`` does not wait for it: `warm_apps` builds them once the
        listener is up, and a request that comes first builds its tenant's."""
        if tenant.app is None:
            from qdspace.node.api.app import create_app

            assert tenant.ctx is not None
            tenant.app = create_app(tenant.ctx)
        return tenant.app

    async def warm_apps(self) -> None:
        """Build every serving tenant's app, one at a time, yielding to requests between;
        then move what the start loaded out of the collector's view."""
        for tenant in list(self.tenants.values()):
            if tenant.ctx is not None and not tenant.error and tenant.app is None:
                with collector_paused():  # its routes and models, built once (util.startup)
                    self.app_of(tenant)
                await asyncio.sleep(0)
        # As a node does once it serves (`node.run`): every tenant's modules, apps, stores
        # and certificates live as long as the host, and one host holds them all, so a full
        # collection (a tenant's transfer or chart allocates many short-lived objects) would
        # walk them all again each time, stalling every tenant's loop with it.
        gc.freeze()

    # -- stopping ----------------------------------------------------------------------

    async def stop_all(self, grace: float) -> None:
        async with self._adding:  # a tenant being added is in, or is not started
            self._stopping = True
        for name in list(self.tenants):
            async with self.lifecycle(name):  # a step under way ends first
                tenant = self.tenants.get(name)
                if tenant is None:  # removed meanwhile
                    continue
                try:
                    await self._stop(tenant, grace)
                except Exception:  # the others still stop
                    logger.exception("tenant %s: stopping failed", tenant.name)

    async def _stop(self, tenant: HostedTenant, grace: float) -> None:
        if tenant.ctx is not None:
            tenant.ctx.serving = False
        if tenant.regulator is not None and tenant.regulator_task is not None:
            tenant.regulator.should_exit = True
            await tenant.regulator_task
            tenant.regulator = tenant.regulator_task = None
        if tenant.refusing is not None:
            await tenant.refusing.stop()
            tenant.refusing = None
        await stop_dsp_listener(tenant)
        if tenant.member is not None:
            await tenant.member.stop(grace)
        await tenant.close_transfers()
        if tenant.ctx is not None:
            await tenant.ctx.peers.close()

    async def drop(self, tenant: HostedTenant) -> None:
        """Stop the tenant and close its database for good (`leaving.remove`, `reopen`):
        it is no longer served, looked up by its token, or listed (hold its `lifecycle`).
        Only this object's entries go: a name or token another object holds now stays."""
        await self._stop(tenant, 0)
        if tenant.ledger is not None:
            tenant.ledger.stop()
            tenant.ledger = None
        if tenant.ctx is not None:
            tenant.ctx.close()
        if self._by_token.get(tenant.token_digest) is tenant:
            del self._by_token[tenant.token_digest]
        if self.tenants.get(tenant.name) is tenant:
            del self.tenants[tenant.name]

    def close_all(self) -> None:
        """Stop the ledgers' threads and close the databases (after `stop_all`)."""
        for tenant in self.tenants.values():
            if tenant.ledger is not None:
                tenant.ledger.stop()
            if tenant.ctx is not None:
                tenant.ctx.close()
