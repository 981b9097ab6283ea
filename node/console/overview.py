"""What the overview page shows: the member, its health, anchoring lag, alerts, its network.

Each value comes from where the API reads it: the readiness checks of ``/readyz``
(`node.api.observe.readiness`), the anchoring queue the ``/metrics`` gauges sample, the
alerts of ``/v1/contracts/alerts`` and the agreements of ``/v1/contracts/agreements``.
The network picture is an SVG drawn here on the server: a few circles and lines need no
graph library in the browser, and the page stays readable without script.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from html import escape

from qdspace.node.api.observe import readiness
from qdspace.node.api.subscription_models import (
    AlertPublic,
    alert_public,
    received_alert_public,
)
from qdspace.node.context import NodeContext
from qdspace.node.disk_room import disk_line
from qdspace.node.member_ids import addressed_name, peer_name

#: how long the overview waits for one peer's hello before it calls the peer unreachable
PEER_TIMEOUT_S = 2.0
#: the newest alerts the overview and investigations pages list (with the count of all)
SHOWN_ALERTS = 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Lag:
    kind: str
    pending: int
    oldest_s: float | None


@dataclass
class Link:
    """Agreements between this member and one peer, by direction."""

    peer: str
    provides: int = 0  # this member provides to the peer
    consumes: int = 0  # this member consumes from the peer
    active: int = 0
    owed: int = 0  # messages the outbox has not delivered to the peer yet
    owed_error: str | None = None  # the last error delivering them
    refused: int = 0  # messages set aside after the peer refused them again and again


@dataclass
class Overview:
    name: str
    member_id: str
    role: str
    space: str
    checks: list[Check]
    lags: list[Lag]
    #: the newest `SHOWN_ALERTS` alerts, oldest first (raised here, then received)
    alerts: list[AlertPublic]
    links: list[Link] = field(default_factory=list)
    #: how many alerts there are in all
    alert_count: int = 0


def local_state(ctx: NodeContext) -> Overview:
    """Everything but the peers' answers (blocking: run in a worker thread)."""
    ident = ctx.keys.identity
    checks = [Check(name, c.ok, c.detail) for name, c in readiness(ctx).items()]
    disk = ctx.disk
    if disk is not None:  # not a readiness check: a node short of disk still serves
        checks.append(disk_check(disk.free(), disk.min_free))
    lags = []
    if ctx.ledger is not None:
        from qdspace.ledger.leaves import KIND_CODES

        now = time.time()
        for kind in KIND_CODES:
            pending = ctx.ledger.queue.pending(kind)
            oldest = None if pending.oldest_at is None else max(0.0, now - pending.oldest_at)
            lags.append(Lag(kind, pending.count, oldest))
    alerts, count = newest_alerts(ctx)
    links: dict[str, Link] = {name: Link(name) for name in ctx.peers.names}
    if ctx.contracts is not None:
        rt = ctx.contracts
        me = ident.member_id
        for held in rt.store.agreement_links():  # counted in SQL: no agreement parsed
            other = held.consumer_id if held.provider_id == me else held.provider_id
            name = peer_name(other)
            link = links.setdefault(name, Link(name))
            if held.provider_id == me:
                link.provides += held.total
            else:
                link.consumes += held.total
            link.active += held.active
        for owed in rt.store.outbox.owed():  # what the outbox could not deliver yet
            name = addressed_name(owed.peer_id, links)
            link = links.setdefault(name, Link(name))
            link.owed += owed.undelivered  # (by name and by member id: both count)
            link.refused += owed.refused
            link.owed_error = link.owed_error or owed.last_error or owed.refused_error
    return Overview(
        ident.name,
        ident.member_id,
        ident.role,
        ctx.settings.space,
        checks,
        lags,
        alerts,
        sorted(links.values(), key=lambda link: link.peer),
        count,
    )


def disk_check(free: int, kept: int) -> Check:
    """The database disk's free space against what the node keeps free (`node.disk_room`)."""
    return Check("disk", free >= kept, disk_line(free, kept).removeprefix("disk: "))


def newest_alerts(ctx: NodeContext) -> tuple[list[AlertPublic], int]:
    """The newest `SHOWN_ALERTS` alerts, oldest first (those this node's subscriptions
    raised, then those peers sent), and how many there are in all: what the overview and
    the investigations page show. Only the newest of each are read: a peer may keep
    10,000 here, ~0.5 s to read them all, and each subscription as many."""
    raised, received, count = [], [], 0
    if ctx.contracts is not None:
        store = ctx.contracts.store
        raised = store.subscriptions.raised_alerts(limit=SHOWN_ALERTS, newest_first=True)[::-1]
        received = store.notices.received_alerts_with_senders(
            limit=SHOWN_ALERTS, newest_first=True
        )[::-1]
        count = store.subscriptions.count_raised_alerts() + store.notices.count_received_alerts()
    shown = [alert_public(a) for a in raised] + [received_alert_public(r) for r in received]
    return shown[-SHOWN_ALERTS:], count


async def peer_check(ctx: NodeContext) -> Check:
    """One check for all peers: how many answer a hello within `PEER_TIMEOUT_S`."""
    names = ctx.peers.names
    if not names:
        return Check("peers", True, "no peers configured")

    async def hello(name: str) -> str | None:
        try:
            await asyncio.wait_for(ctx.peers.hello(name), PEER_TIMEOUT_S)
        except Exception as exc:  # an unreachable peer is this check's finding
            return f"{name}: {type(exc).__name__}"
        return None

    failed = [f for f in await asyncio.gather(*(hello(n) for n in names)) if f]
    detail = f"{len(names) - len(failed)} of {len(names)} answer"
    if failed:
        detail += " (" + ", ".join(failed) + ")"
    return Check("peers", not failed, detail)


def network_svg(me: str, links: list[Link], size: int = 360) -> str:
    """This member in the middle, its peers on a circle, a line per pair that agreed.

    Arrows point from provider to consumer; the label counts agreements; a peer the
    outbox owes messages (down, refusing, holding its connections open) has a red ring
    and the count. The SVG has a title and a description for screen readers, and the
    page lists the same in a table.
    """
    centre = size / 2
    radius = size / 2 - 60
    parts = [
        f'<svg class="network" viewBox="0 0 {size} {size}" role="img" '
        'aria-labelledby="net-title net-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="net-title">Members this node trades with</title>',
        f'<desc id="net-desc">{escape(me)} in the centre; {len(links)} peers around it; '
        "lines are agreements, arrows point from provider to consumer.</desc>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#1f4e79"/></marker></defs>',
    ]
    for i, link in enumerate(links):
        angle = 2 * math.pi * i / max(1, len(links)) - math.pi / 2
        x = centre + radius * math.cos(angle)
        y = centre + radius * math.sin(angle)
        total = link.provides + link.consumes
        if total:
            start, end = (centre, centre), (x, y)
            if link.consumes and not link.provides:
                start, end = end, start
            # stop the line at the circles' edges so the arrow head shows
            dx, dy = end[0] - start[0], end[1] - start[1]
            length = math.hypot(dx, dy) or 1.0
            sx, sy = start[0] + dx / length * 34, start[1] + dy / length * 34
            ex, ey = end[0] - dx / length * 30, end[1] - dy / length * 30
            both = ' marker-start="url(#arrow)"' if link.provides and link.consumes else ""
            parts.append(
                f'<line x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" '
                f'stroke="#1f4e79" stroke-width="{1.5 + min(total, 6)}" '
                f'marker-end="url(#arrow)"{both}/>'
            )
            mx, my = (centre + x) / 2, (centre + y) / 2
            parts.append(
                f'<text x="{mx:.1f}" y="{my - 6:.1f}" class="edge-label" '
                f'text-anchor="middle">{total} agr.</text>'
            )
        colour = "#e8f0f8" if total else "#f4f4f4"
        # a peer the outbox owes messages: a red ring and the count under its name
        ring = 'stroke="#b00020" stroke-width="3"' if link.owed or link.refused else ""
        ring = ring or 'stroke="#333"'
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="28" fill="{colour}" {ring}/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" class="node-label">'
            f"{escape(link.peer)}</text>"
        )
        said = [f"{link.owed} owed"] if link.owed else []
        said += [f"{link.refused} set aside"] if link.refused else []
        if said:
            parts.append(
                f'<text x="{x:.1f}" y="{y + 44:.1f}" text-anchor="middle" class="owed" '
                f'fill="#b00020">{", ".join(said)}</text>'
            )
    parts.append(
        f'<circle cx="{centre}" cy="{centre}" r="32" fill="#1f4e79"/>'
        f'<text x="{centre}" y="{centre + 4}" text-anchor="middle" class="node-label me" '
        f'fill="#ffffff">{escape(me)}</text></svg>'
    )
    return "".join(parts)
