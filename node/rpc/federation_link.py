"""The gRPC adapter of the member service's port (``runtime.federation_member.CoordinatorLink``).

The node's federation member service asks coordinators for jobs, statuses, proofs and
rounds through a link; this module makes one from the node's own keys: a mutual-TLS
channel to the coordinator (this node's own gRPC address when it coordinates, else the
address its settings or the member directory name for that peer), the typed
``FederationClient`` on it, and a ``MemberRunner`` signing with the node's key and
checking the roster against the node's live revocation list. The composition root
(``node.run``) hands ``grpc_coordinators`` to the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from qdspace.federation.job import JobSpec
from qdspace.federation.member import Trainer
from qdspace.federation.params import Params
from qdspace.federation.round_status import StatusView
from qdspace.node.errors import NotTheMember, PeerError, UnknownPeerError
from qdspace.node.identity.member import MemberKeys
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient, coordinator_key
from qdspace.node.rpc.federation_keys import Revoked
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.runtime.federation_member import (
    Connect,
    MemberEvent,
    MemberResult,
    NotTheCoordinator,
    Position,
    VersionHook,
    Vouch,
)
from qdspace.node.runtime.federation_releases import ReleaseGuard

if TYPE_CHECKING:
    from qdspace.node.context import NodeContext

#: member id -> its name, once the server called by that name is confirmed to be it
Confirm = Callable[[str], Awaitable[str]]


class GrpcCoordinator:
    """One coordinator about one job, over an mTLS channel opened with the node's keys."""

    def __init__(
        self,
        keys: MemberKeys,
        revoked: Revoked,
        channel: grpc.aio.Channel,
        coordinator: str,
        job_id: str,
        confirm: Confirm | None = None,
    ) -> None:
        self._keys = keys
        self._revoked = revoked
        self._confirm = confirm
        self.coordinator = coordinator
        self._channel = channel
        self._client = FederationClient(self._channel, coordinator, job_id)

    async def start_job(self, job: JobSpec, initial: Params) -> StatusView:
        return await self._client.start_job(job, initial)

    async def list_jobs(self) -> list[StatusView]:
        return await self._client.list_jobs()

    async def status(self, known: Position | None = None, wait_s: float = 0.0) -> StatusView:
        return await self._client.status(known, wait_s)

    async def job(self) -> JobSpec:
        return await self._client.job()

    async def version_proof(self, version: int) -> str:
        return await self._client.version_proof(version)

    async def follow(
        self,
        trainer: Trainer,
        *,
        on_event: Callable[[MemberEvent], None],
        on_version: VersionHook,
        poll_s: float,
        coordinator_id: str | None = None,
        releases: ReleaseGuard | None = None,
    ) -> MemberResult:
        keys = self._keys
        confirm = self._confirm
        before_send = None
        if coordinator_id is not None and confirm is not None:

            async def before_send() -> None:
                """The name still the member the session joined (`NotTheMember` ends the
                session); a handshake that cannot complete is not decided here: the
                call itself meets the same peer, as the pin check leaves it."""
                try:
                    await confirm(coordinator_id)
                except NotTheMember:
                    raise
                except PeerError:
                    return

        runner = MemberRunner(
            self._client,
            keys.identity.name,
            trainer,
            await coordinator_key(self._channel, self.coordinator),
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.trust,
            revoked=self._revoked,
            on_event=on_event,
            on_version=on_version,
            poll_s=poll_s,
            before_send=before_send,
            releases=releases,
        )
        return await runner.run()

    async def close(self) -> None:
        await self._channel.close()


def grpc_coordinators(ctx: NodeContext) -> Connect:
    """How the node reaches a coordinator by name: itself, or a peer it knows (its
    settings' or the member directory's, pinned to the directory's certificate)."""
    settings = ctx.settings

    def connect(coordinator: str, job_id: str) -> GrpcCoordinator:
        if coordinator == settings.name:
            address = f"{settings.grpc_host}:{settings.grpc_port}"
            channel = open_channel(ctx.keys, address, coordinator)
        elif coordinator in ctx.peers.names:
            channel = ctx.peers.open_channel(coordinator)
        else:
            raise UnknownPeerError(
                f"unknown coordinator {coordinator!r}; known peers: {ctx.peers.names}"
            )
        return GrpcCoordinator(
            ctx.keys,
            ctx.revocations.is_revoked,
            channel,
            coordinator,
            job_id,
            ctx.peers.confirm_member,
        )

    return connect


def coordinator_vouch(ctx: NodeContext) -> Vouch:
    """Who the coordinator of a job must be, for the whole session: under contract, the
    member this node's active agreement for the job's asset names as its provider (the
    coordinator offers the job's asset and signs it), confirmed at the name this node
    reaches it by (`PeerDirectory.confirm_member`: a name passes to another member once
    its holder leaves); under no contract, the member holding the name when this node
    joins (`PeerDirectory.member_at`). Before each update it sends, the session confirms
    the name is still that member's (`GrpcCoordinator.follow`)."""

    async def vouch(coordinator: str, job: JobSpec) -> str | None:
        asset = job.agreement_asset
        contracts = ctx.contracts
        if asset is None or contracts is None:
            return await ctx.peers.member_at(coordinator)
        held = await asyncio.to_thread(contracts.agreed_with, asset, coordinator)
        if held is None:
            raise NotTheCoordinator(
                f"{ctx.keys.identity.name} holds no agreement with {coordinator} for job "
                f"{job.job_id}'s asset {asset}: negotiate its offer first (qdspace fl join "
                "does), then join"
            )
        provider_id = held.signed.agreement.provider_id
        await ctx.peers.confirm_member(provider_id)
        return provider_id

    return vouch
