"""Contracts pages: peers' catalogs, negotiations, agreements, transfers, deletion duties.

Each reads what the ``/v1/contracts`` routes read (the contract runtime's store, the
consumer client's catalog and negotiation calls) and converts it with the same public
models (`qdspace.node.api.contracts_models`). Starting a negotiation from an offer is
``negotiate_offer``, the call behind ``POST /v1/contracts/negotiations`` with
``as_offered``. "Verify on chain" builds the agreement's inclusion proof and checks it
against the chain, as the regulator's proof route does (`node.api.regulator.proof_public`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qdspace.node.api.contracts_models import (
    CatalogEntryPublic,
    agreement_full,
    api_time,
    duty_public,
    entry_public,
    negotiation_public,
    receipt_public,
    transfer_public,
)
from qdspace.node.console.auth import form_of
from qdspace.node.console.render import Console, Endpoint, segment
from qdspace.policies.model import Policy
from qdspace.policies.retention import ATTENTION_ORDER, DutyStatus, retention_days

#: how long the contracts page waits for one peer's catalog
CATALOG_TIMEOUT_S = 3.0
#: the newest transfers a page lists (a consumer pulling every few minutes keeps
#: thousands; `GET /v1/contracts/transfers` pages through all of them)
SHOWN_TRANSFERS = 50
#: the newest negotiations it lists (a member may open any number, declined or not)
SHOWN_NEGOTIATIONS = 50
#: the newest agreements it lists (one per order and partner: thousands a year)
SHOWN_AGREEMENTS = 50
#: the deletion duties it lists (one per agreement and order), those that need someone
#: first (`ContractStore.deletion_duties(attention_first=True)`), and the newest receipts
SHOWN_DUTIES = 50
SHOWN_RECEIPTS = 50


def duty_summary(counts: dict[DutyStatus, int]) -> str:
    """How many duties stand in each status, in the order the page lists them."""
    return ", ".join(
        f"{counts[status]} {status.value.replace('_', ' ')}"
        for status in ATTENTION_ORDER
        if counts.get(status)
    )


MAX_ID = 256


@dataclass(frozen=True)
class Catalog:
    peer: str
    entries: list[CatalogEntryPublic]
    error: str = ""


@dataclass(frozen=True)
class Term:
    rule: str  # "permission", "prohibition", "duty"
    action: str
    constraints: list[str]


def _operand(value: Any) -> str:
    if isinstance(value, frozenset | set | tuple | list):
        return ", ".join(sorted(str(v) for v in value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def terms_of(policy: Policy) -> list[Term]:
    """The policy's rules as lines a person reads (scope, purposes, fields, retention)."""

    def lines(constraints: Any) -> list[str]:
        return [f"{c.left_operand} {c.operator} {_operand(c.right_operand)}" for c in constraints]

    terms = []
    for permission in policy.permissions:
        terms.append(Term("permission", str(permission.action), lines(permission.constraints)))
        for duty in permission.duties:
            terms.append(Term("duty", str(duty.action), lines(duty.constraints)))
    for prohibition in policy.prohibitions:
        terms.append(Term("prohibition", str(prohibition.action), lines(prohibition.constraints)))
    for duty in policy.obligations:
        terms.append(Term("duty", str(duty.action), lines(duty.constraints)))
    return terms


def countdown(deadline: datetime, now: datetime) -> str:
    left = deadline - now
    if left <= timedelta(0):
        return "due now"
    days, rest = divmod(left.total_seconds(), 86400)
    return f"{int(days)} d {int(rest // 3600)} h left"


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx
    root = console.root

    def runtime() -> Any:
        if ctx.contracts is None or ctx.contract_client is None:
            raise HTTPException(503, "this node runs no contract machinery")
        return ctx.contracts, ctx.contract_client

    async def catalogs() -> list[Catalog]:
        _, client = runtime()

        async def one(peer: str) -> Catalog:
            try:
                found = await asyncio.wait_for(client.catalog(peer), CATALOG_TIMEOUT_S)
            except Exception as exc:  # an unreachable peer is shown, not raised
                return Catalog(peer, [], f"{type(exc).__name__}: {exc}"[:300])
            return Catalog(peer, [entry_public(e) for e in found])

        return list(await asyncio.gather(*(one(p) for p in ctx.peers.names)))

    def local() -> dict[str, Any]:
        rt, _ = runtime()
        now = rt.clock.now()
        counts = rt.store.count_duties(now)
        shown = rt.store.deletion_duties(now, limit=SHOWN_DUTIES, attention_first=True)
        return {
            "duties": [duty_public(d) for d in shown],
            "duty_count": sum(counts.values()),
            "duty_summary": duty_summary(counts),
            "receipts": [
                receipt_public(r)
                for r in rt.store.receipts(limit=SHOWN_RECEIPTS, newest_first=True)
            ],
            "receipt_count": rt.store.count_receipts(),
            "negotiations": [
                negotiation_public(n)
                for n in rt.store.negotiations(limit=SHOWN_NEGOTIATIONS, newest_first=True)
            ],
            "negotiation_count": rt.store.count_negotiations(),
            "agreements": [
                agreement_full(a)
                for a in rt.store.agreements(limit=SHOWN_AGREEMENTS, newest_first=True)
            ],
            "agreement_count": rt.store.count_agreements(),
            "transfers": [
                transfer_public(t)
                for t in rt.store.transfers(limit=SHOWN_TRANSFERS, newest_first=True)
            ],
            "transfer_count": rt.store.count_transfers(),
            "me": rt.me.member_id,
        }

    async def contracts_page(request: Request) -> Response:
        found = await run_in_threadpool(local)
        return console.page(
            request,
            "contracts.html",
            "contracts",
            catalogs=await catalogs(),
            error=request.query_params.get("error", "")[:500],
            **found,
        )

    async def negotiate(request: Request) -> Response:
        _, client = runtime()
        form = await form_of(request)
        peer, asset = form.get("peer", "").strip(), form.get("asset_id", "").strip()
        if not peer or not asset or len(peer) > MAX_ID or len(asset) > MAX_ID:
            raise HTTPException(400, "peer and asset_id: give both (at most 256 characters)")
        if peer not in ctx.peers.names:
            raise HTTPException(404, f"peer: {peer!r} is not a peer of this node")
        negotiation = await client.negotiate_offer(peer, asset)
        done = negotiation_public(negotiation)
        if done.agreement_id and done.state == "FINALIZED":
            return RedirectResponse(
                f"{root}/contracts/agreements/{segment(done.agreement_id)}", 303
            )
        reason = done.reason or done.state
        return console.page(
            request,
            "error.html",
            status=409,
            code=409,
            detail=f"negotiation {done.negotiation_id} ended {done.state}: {reason}",
        )

    def agreement_view(agreement_id: str) -> dict[str, Any]:
        rt, _ = runtime()
        stored = rt.store.agreement(agreement_id)
        policy = stored.signed.agreement.policy
        now = rt.clock.now()
        closures = [
            {
                "order_id": c.order_id,
                "closed_at": api_time(c.closed_at),
                "deadline": api_time(c.deadline),
                "left": countdown(c.deadline, now),
            }
            for c in rt.store.closures(agreement_id)
        ]
        return {
            "a": agreement_full(stored),
            "terms": terms_of(policy),
            "retention_days": retention_days(policy),
            "closures": closures,
            "transfers": [
                transfer_public(t)
                for t in rt.store.transfers(agreement_id, limit=SHOWN_TRANSFERS, newest_first=True)
            ],
            "transfer_count": rt.store.count_transfers(agreement_id),
            "anchors": ctx.ledger is not None,
        }

    def agreement_id_of(request: Request) -> str:
        agreement_id = str(request.path_params["agreement_id"])
        if not agreement_id or len(agreement_id) > MAX_ID or not agreement_id.isprintable():
            raise HTTPException(400, "agreement id: 1 to 256 printable characters")
        return agreement_id

    async def agreement_page(request: Request) -> Response:
        view = await run_in_threadpool(agreement_view, agreement_id_of(request))
        return console.page(request, "agreement.html", "contracts", **view)

    async def verify_agreement(request: Request) -> Response:
        from qdspace.node.api.regulator import proof_public

        agreement_id = agreement_id_of(request)
        ledger = ctx.ledger
        if ledger is None:
            raise HTTPException(503, "this node anchors to no chain")
        proof = await run_in_threadpool(
            proof_public, ledger.queue, ledger.client, ledger.load_record, "agreement", agreement_id
        )
        return console.page(request, "_verdict.html", proof=proof, verdict=proof.verdict)

    return [
        ("/contracts", contracts_page, "GET"),
        ("/contracts/negotiate", negotiate, "POST"),
        ("/contracts/agreements/{agreement_id}", agreement_page, "GET"),
        ("/contracts/agreements/{agreement_id}/verify", verify_agreement, "GET"),
    ]
