"""Request bodies and response models of a consumer's live subscriptions and their SPC
alerts, and the domain -> API mapping.

Apart from the other contract models (`qdspace.node.api.contracts_models`): a
subscription's answer carries its state across a broken stream and a restart and the
alerts kept with it, which neither a negotiation nor a transfer has.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from qdspace.connector.contract_store.notices import ReceivedAlert
from qdspace.connector.spc import QualityAlert
from qdspace.node.api.bodies import Body
from qdspace.node.api.contracts_models import MAX_BASELINE, Finite, api_time
from qdspace.node.api.models import Id
from qdspace.node.errors import NodeError
from qdspace.node.member_ids import peer_name
from qdspace.node.runtime.contract_ports import Subscription


class SubscribeBody(Body):
    agreement_id: Id
    purpose: Id = "spc-monitoring"
    characteristic: Id = "score"
    usl: Finite | None = 0.5
    lsl: Finite | None = None
    baseline_size: int = Field(default=20, ge=2, le=MAX_BASELINE)


class AlertPublic(BaseModel):
    """An SPC alert: raised here by one of this node's subscriptions (``sender_id`` and
    ``sender`` empty), or sent by the member ``sender_id`` (named ``sender``), a consumer
    of ours that saw our process drift in data it received under ``agreement_id``."""

    sender_id: str = ""
    sender: str = ""
    alert_id: str
    rule: str
    description: str
    agreement_id: str
    order_id: str
    station: str
    characteristic: str
    points: list[float]
    at: str | None


class SubscriptionPublic(BaseModel):
    """A live subscription: ``state`` is ``connecting``, ``streaming``, ``reconnecting``
    (``error`` says why the stream broke) or ``ended`` (``error`` says why); ``received``
    counts every row it brought, across restarts; the latencies are the newest since this
    node started it or resumed it after a restart (``resumed``); ``reconnects`` how often
    its stream was opened again."""

    subscription_id: str
    provider: str
    agreement_id: str
    running: bool
    state: str
    resumed: bool
    reconnects: int
    received: int
    position: str
    error: str
    latency_ms_p50: float | None
    latency_ms_max: float | None
    #: the newest alerts its monitor raised (at most 100, oldest first), how many it
    #: raised in all, and how many since this node started it went unsent, past the
    #: 10,000 one subscription keeps
    alerts: list[AlertPublic]
    alerts_total: int
    alerts_unsent: int


class SubscriptionEnded(BaseModel):
    """A subscription ended by ``DELETE /v1/contracts/subscriptions/{id}``."""

    subscription_id: str
    reason: str


class AlertsPublic(BaseModel):
    """The SPC alerts this node's subscriptions raised and those consumers sent it, each
    list oldest first (its newest ``limit`` when one was asked for), and how many of
    each there are in all."""

    raised: list[AlertPublic]
    received: list[AlertPublic]
    raised_total: int = 0
    received_total: int = 0


def alert_public(a: QualityAlert, sender_id: str = "") -> AlertPublic:
    """`a` as shown; `sender_id` the member that sent it ("" for one raised here)."""
    return AlertPublic(
        sender_id=sender_id,
        sender=_name(sender_id),
        alert_id=a.alert_id,
        rule=a.alert.rule,
        description=a.alert.description,
        agreement_id=a.agreement_id,
        order_id=a.order_id,
        station=a.station,
        characteristic=a.characteristic,
        points=[p.value for p in a.alert.points],
        at=api_time(a.alert.at),
    )


def received_alert_public(r: ReceivedAlert) -> AlertPublic:
    """An alert a peer sent, with its sender."""
    return alert_public(r.alert, r.sender_id)


def _name(member_id: str) -> str:
    """The member name in `member_id` ("" for none; the id itself if it is not one)."""
    if not member_id:
        return ""
    try:
        return peer_name(member_id)
    except NodeError:
        return member_id


def subscription_public(
    s: Subscription, alerts: Sequence[QualityAlert] = (), alerts_total: int = 0
) -> SubscriptionPublic:
    """`s` with the newest of its alerts kept (`alerts`, oldest first) and their count."""
    lat = sorted(s.latencies_ms)
    return SubscriptionPublic(
        subscription_id=s.subscription_id,
        provider=s.provider,
        agreement_id=s.agreement_id,
        running=s.running,
        state=s.state,
        resumed=s.resumed,
        reconnects=s.reconnects,
        received=s.received,
        position=s.position,
        error=s.error,
        latency_ms_p50=lat[len(lat) // 2] if lat else None,
        latency_ms_max=lat[-1] if lat else None,
        alerts=[alert_public(a) for a in alerts],
        alerts_total=alerts_total,
        alerts_unsent=s.alerts_unsent,
    )
