"""What serves one member to its peers, apart from the operator's HTTP listeners.

A member on the wire is its peer gRPC server (its own certificate and member id), the
contract jobs behind it (outbox delivery, transfer resume, retention sweep), the member
side of federated learning and, with an authority service, the task that follows the
CRL and the member directory. `node.run.serve` runs one of these next to a node's
operator and regulator APIs; a managed host (`node.host.runtime`) runs one per tenant
in one event loop and stops and restarts it to suspend and resume the tenant. Written
once here, so the two cannot drift: peers cannot tell a hosted tenant from a node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from qdspace.node.context import NodeContext
from qdspace.node.errors import ConfigError
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.federation_service import FederationServicer
from qdspace.node.rpc.limits import CallCaps, CallLimiter
from qdspace.node.rpc.node_service import NodeServicer
from qdspace.node.rpc.server import PeerServer, build_server
from qdspace.node.rpc.trace_service import TraceServicer
from qdspace.node.runtime.directory import DirectoryFollower, FollowerSettings
from qdspace.node.runtime.trace_producer import TraceRoom
from qdspace.util.urls import host_port

if TYPE_CHECKING:
    from qdspace.node.config import NodeSettings
    from qdspace.node.rpc.contracts_jobs import ContractJobs
    from qdspace.node.runtime.federation_member import FederationMember
    from qdspace.node.runtime.ledger import NodeLedger

logger = logging.getLogger("node")


def trace_room(ctx: NodeContext) -> TraceRoom | None:
    """Our part of root-cause traces (answering customers, asking producers) and the
    OEM's trace runs on ``ctx.traces``; None on a node without contract machinery."""
    contracts = ctx.contracts
    if contracts is None:
        return None
    from qdspace.connector.trace_store import TraceStore
    from qdspace.node.rpc.trace_client import grpc_ask
    from qdspace.node.runtime.trace_runs import TraceRuns

    room = TraceRoom(contracts, grpc_ask(ctx.peers), ctx.settings.traces_per_member_hour)
    ctx.traces = TraceRuns(
        room,
        TraceStore(ctx.store.engine),
        contracts.clock.now,
        lambda kind, ref, data: contracts.record(kind, ref, data),
    )
    return room


def call_caps(settings: NodeSettings) -> CallCaps:
    """A member's calls and streams in flight, and all calls, as the settings cap them
    (for the gRPC listener and the DSP listener, `node.dsp.caps`: `call_limiter`)."""
    return CallCaps(
        server_calls=settings.rpc_max_calls,
        per_peer_calls=settings.rpc_max_calls_per_peer,
        per_peer_streams=settings.rpc_max_streams_per_peer,
        per_peer_rate=settings.rpc_rate_per_peer,
        per_peer_burst=settings.rpc_burst_per_peer,
    )


def call_limiter(ctx: NodeContext) -> CallLimiter:
    """The node's one count of its members' calls and streams in flight, which both the
    gRPC listener and the DSP listener admit against: a member at its cap of streams on
    one is at it on the other (separate counts would let it hold twice the cap)."""
    if ctx.calls is None:
        ctx.calls = CallLimiter(call_caps(ctx.settings))
    return ctx.calls


def build_peer_server(
    ctx: NodeContext,
    port: int | None = None,
    admission: Sequence[grpc.aio.ServerInterceptor] = (),
) -> PeerServer:
    """The member's gRPC server, bound (``port``: the settings' unless given;
    ``admission``: a host's per-tenant quota interceptors, outermost)."""
    registrations = [
        NodeServicer(ctx.keys.identity).register,
        TraceServicer(ctx.store, trace_room(ctx)).register,
    ]
    registrations.append(FederationServicer.from_context(ctx).register)
    if ctx.contracts is not None:
        from qdspace.node.rpc.contracts_service import contract_registrations

        registrations.extend(contract_registrations(ctx.contracts, ctx.metrics))
    settings = ctx.settings
    return build_server(
        ctx.keys,
        PeerAuthenticator(ctx.revocations, ctx.peers.pinned),
        registrations,
        settings.grpc_host,
        settings.grpc_port if port is None else port,
        call_limiter(ctx),
        ctx.metrics,
        admission,
    )


def directory_follower(ctx: NodeContext, grpc_port: int) -> DirectoryFollower | None:
    """The task that follows the authority service, when ``authority_url`` names one."""
    settings = ctx.settings
    if not settings.authority_url:
        return None
    from qdspace.node.authority.client import AuthorityClient
    from qdspace.node.identity.directory import DirectoryEntry, new_entry

    # an IPv6 listener is published bracketed, as the directory takes it (`util.hosts`)
    advertised = settings.advertise_peer or host_port(settings.grpc_host, grpc_port)

    def own_entry() -> DirectoryEntry:
        if not settings.advertise_peer and settings.grpc_host in ("0.0.0.0", "::", ""):
            raise ConfigError(
                f"gRPC listens on {settings.grpc_host}: set advertise_peer (host:port other "
                "members reach this node at) in node.json to publish it in the directory"
            )
        endpoints = {"peer": advertised}
        if ctx.dsp_endpoint is not None:  # set when the DSP listener started (`run.start_dsp`)
            endpoints["dsp"] = ctx.dsp_endpoint
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


def attach_anchoring(ctx: NodeContext) -> NodeLedger | None:
    """Attach the ledger (anchorer and QDM sweep threads, started) when a chain is
    configured, and anchor every global model version the member coordinates."""
    from qdspace.node.runtime.ledger import attach_ledger, enqueue_leaf

    ledger = attach_ledger(ctx)
    if ledger is None:
        return None
    ledger.start()

    def anchor_version(kind: str, ref_id: str, record: bytes) -> None:
        enqueue_leaf(ctx, kind, ref_id, record)

    ctx.anchor_version = anchor_version
    return ledger


#: a member certificate this close to its end is warned about at every start
CERTIFICATE_WARNING = dt.timedelta(days=30)


def note_certificate(ctx: NodeContext, now: dt.datetime | None = None) -> str | None:
    """Export when the member certificate ends (a metric to alert on) and warn when that
    is within `CERTIFICATE_WARNING`: once it has passed, every peer refuses the member,
    and a node running for months may never be restarted to see a warning. The
    warning's text, or None."""
    ident = ctx.keys.identity
    ctx.metrics.certificate_expiry.set(ident.not_after.timestamp())
    left = ident.not_after - (now or dt.datetime.now(dt.UTC))
    if left > CERTIFICATE_WARNING:
        return None
    end = f"{ident.not_after:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        # the authority renews only a certificate still valid (`Authority.renew`)
        warning = (
            f"the member certificate of {ident.name} has ended ({end}): peers refuse it, "
            "and it can no longer be renewed; ask the authority's operator to revoke it and "
            "make a new enrollment code (`qdspace authority revoke`, `qdspace authority "
            "enroll`), then join again (`qdspace node join`)"
        )
    else:
        warning = (
            f"the member certificate of {ident.name} ends in {left.days} days ({end}): "
            "peers refuse it after, and it can be renewed only before; renew it (`qdspace "
            "node renew`, or for a hosted tenant `qdspace host tenant renew`)"
        )
    logger.warning("%s", warning)
    return warning


class MemberServer:
    """One member's peer side: `bind`, `start`, `follow`, `stop` (and again, after stop).

    ``bind`` builds the gRPC server on its port before anything starts, so a taken port
    is one clear error; after a ``stop`` the same object binds the port it had again
    (a suspended tenant resumed)."""

    def __init__(
        self, ctx: NodeContext, admission: Sequence[grpc.aio.ServerInterceptor] = ()
    ) -> None:
        self.ctx = ctx
        self.admission = admission
        self.peer_server: PeerServer | None = None
        self.port: int | None = None  # the bound port, kept across a stop
        self._federation: FederationMember | None = None
        self._jobs: ContractJobs | None = None
        self._follow_stop = asyncio.Event()
        self._follow_task: asyncio.Task[None] | None = None

    def bind(self) -> PeerServer:
        self.peer_server = build_peer_server(self.ctx, self.port, self.admission)
        self.port = self.peer_server.port
        return self.peer_server

    def prepare(self) -> None:
        """The member side of federated learning (the operator API reads it from the
        context, so it is made before the API app); the certificate's end noted."""
        note_certificate(self.ctx)
        from qdspace.node.rpc.federation_link import coordinator_vouch, grpc_coordinators
        from qdspace.node.runtime.federation_member import FederationMember

        ctx = self.ctx
        self._federation = FederationMember(
            grpc_coordinators(ctx),
            ctx.settings.directory,
            ctx.keys.identity.name,
            coordinator_vouch(ctx),
            floor=ctx.settings.federation_floor.floor(),
            room=ctx.check_kept,  # a deployed version: the free disk, a tenant's quota
        )
        ctx.federation = self._federation

    async def start(self) -> None:
        """Serve gRPC and run the contract jobs (`bind` first)."""
        if self.peer_server is None:
            self.bind()
        if self._federation is None:
            self.prepare()
        assert self.peer_server is not None
        await self.peer_server.start()
        from qdspace.node.rpc.contracts_jobs import ContractJobs

        self._jobs = ContractJobs(self.ctx)

    def follow(self) -> None:
        """Follow the authority service (once every listener is up), if one is named."""
        assert self.port is not None
        follower = directory_follower(self.ctx, self.port)
        self.ctx.follower = follower  # ``/readyz`` reads whether it holds a directory
        if follower is not None:
            self._follow_stop = asyncio.Event()
            self._follow_task = asyncio.create_task(follower.run(self._follow_stop))

    async def stop(self, grace: float) -> None:
        """Stop following, federation, gRPC (open streams end after ``grace``), the jobs."""
        self._follow_stop.set()
        if self._follow_task is not None:
            await self._follow_task
            self._follow_task = None
        if self._federation is not None:
            await self._federation.stop()
            self._federation = None
        if self.peer_server is not None:
            await self.peer_server.stop(grace)
            self.peer_server = None
        if self._jobs is not None:
            await self._jobs.stop()
            self._jobs = None
        logger.debug("member %s: peer side stopped", self.ctx.settings.name)
