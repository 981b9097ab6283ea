"""What the operator API needs from the consumer side of the contract services.

Negotiating, pulling and subscribing are calls to peers, so their driver
(`qdspace.node.rpc.contracts_client.ContractClient`) lives with the gRPC clients. The
REST routes that start them must not import the gRPC layer (`api/` and `rpc/` never
import each other), so they ask for these two ports instead: `PeerContracts` and
`OutboxDelivery` are the methods a route calls, and `Subscription` is the state of a
live stream a route reports. The node's composition root (`qdspace.node.run`) puts the
gRPC implementations on the `NodeContext`; a test may put anything that has the same
methods there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from qdspace.connector.assets import CatalogEntry
from qdspace.connector.negotiation import Negotiation
from qdspace.connector.spc import SpcSpec
from qdspace.connector.transfer import TransferProcess


@dataclass
class Subscription:
    """A live subscription on the consumer side, with what its SPC monitor saw since this
    node started it (or resumed it after a restart: `resumed`). `received` counts every
    row it brought, across restarts (kept with its cursor: `ContractStore.delivered`);
    the latencies are the newest since this node started it. `position` is where the
    stream stands (it resumes after it); `error` the last reason the stream broke, while
    `state` is ``reconnecting``, or why it ended."""

    subscription_id: str
    provider: str
    agreement_id: str
    characteristic: str
    spec: SpcSpec
    purpose: str = ""
    received: int = 0
    #: alerts its monitor raised since this node started it (each kept in the store:
    #: `raised_alerts`), and those past the store's bound, counted only
    alerts_raised: int = 0
    alerts_unsent: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    position: str = ""
    error: str = ""
    task: asyncio.Task[None] | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    #: recorded in the node's store (its provider opened the stream once): it reconnects
    #: when the stream breaks and is resumed after a restart
    recorded: bool = False
    resumed: bool = False
    reconnects: int = 0
    #: "connecting", "streaming", "reconnecting" or "ended"
    state: str = "connecting"

    @property
    def running(self) -> bool:
        """Streaming or about to (not ended: its task may still be recording why)."""
        return self.state != "ended" and self.task is not None and not self.task.done()


class PeerContracts(Protocol):
    """The consumer's calls to providers: catalogs, negotiations, pulls, live streams."""

    transfers: dict[str, asyncio.Task[TransferProcess]]
    subscriptions: dict[str, Subscription]

    async def catalog(self, peer: str, kind: str = "") -> list[CatalogEntry]: ...

    async def negotiate(
        self,
        peer: str,
        asset_id: str,
        *,
        purposes: frozenset[str],
        orders: frozenset[str] | None = None,
        fields: frozenset[str] | None = None,
        retention_days: int | None = None,
        valid_until: datetime | None = None,
    ) -> Negotiation: ...

    async def negotiate_offer(self, peer: str, asset_id: str) -> Negotiation: ...

    async def request_transfer(
        self,
        agreement_id: str,
        *,
        purpose: str,
        order_id: str | None,
        fields: frozenset[str] | None = None,
        since_last: bool = False,
    ) -> TransferProcess: ...

    def start_pull(
        self, transfer_id: str, batch_rows: int = 0
    ) -> asyncio.Task[TransferProcess]: ...

    def subscribe(
        self,
        agreement_id: str,
        *,
        purpose: str,
        characteristic: str = "score",
        spec: SpcSpec | None = None,
    ) -> Subscription: ...

    async def end_subscriptions(
        self, reason: str, *, ids: Iterable[str] = (), agreements: Iterable[str] = ()
    ) -> list[str]: ...


class OutboxDelivery(Protocol):
    """Delivers the node's due notices to peers (terminations, receipts, closures)."""

    async def flush(self, timeout_s: float = 10.0) -> None: ...

    def delivering(self) -> frozenset[str]:
        """The peers a delivery is under way to now."""
        ...

    def kick(self) -> None:
        """Poll for due messages now (something was queued)."""
        ...
