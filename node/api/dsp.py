"""Operator routes of the DSP binding: ``POST /v1/dsp/negotiations`` starts a negotiation
with any DSP provider through the node's consumer side (`node.dsp.consumer`), on its
published offer or on that offer narrowed (purposes, orders, fields, retention, an end);
a hosted member's staff with the providers its space publishes only
(`node.dsp.providers`);
``POST /v1/dsp/transfers`` asks the provider of a DSP agreement for a transfer (pulled
over the HTTP data plane, `node.dsp.transfer_consumer`), ``GET /v1/dsp/transfers/{id}``
shows it, and ``.../suspend|resume|terminate`` control it on either side."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

from qdspace.connector.offers import Narrowing
from qdspace.node.api.bodies import Body
from qdspace.node.api.contracts_models import MAX_DAYS, MAX_LIST
from qdspace.node.api.deps import Ctx, require_operator
from qdspace.node.api.models import ID_PATTERN, BodyDatetime, Id
from qdspace.node.context import NodeContext
from qdspace.node.dsp.consumer import DspConsumer
from qdspace.node.dsp.providers import ProviderReach
from qdspace.node.errors import DspNotServed
from qdspace.util.urls import plain_https


class DspNegotiationStarted(BaseModel):
    """A negotiation sent to a DSP provider: our process id, the provider's, and who
    the provider is (read from the certificate its listener presented)."""

    negotiation_id: str
    provider_pid: str
    provider: str


class NegotiateBody(Body):
    provider_url: Annotated[
        str, StringConstraints(min_length=9, max_length=2048, pattern=r"^https://[!-~]+$")
    ]
    dataset_id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
    #: narrow the published offer (a provider of this node's offer form): the purposes
    #: wanted, and only these orders and fields, a shorter retention, an end; none of
    #: them: the offer as published
    purposes: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_LIST)
    orders: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_LIST)
    fields: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_LIST)
    retention_days: int | None = Field(default=None, ge=0, le=MAX_DAYS)
    valid_until: BodyDatetime | None = None

    @model_validator(mode="after")
    def _purposes_with_terms(self) -> NegotiateBody:
        narrowed = (self.orders, self.fields, self.retention_days, self.valid_until)
        if self.purposes is None and any(v is not None for v in narrowed):
            raise ValueError("purposes: name the purposes wanted when narrowing the offer")
        return self

    def narrowing(self) -> Narrowing | None:
        if self.purposes is None:
            return None
        return Narrowing(
            purposes=frozenset(self.purposes),
            orders=None if self.orders is None else frozenset(self.orders),
            fields=None if self.fields is None else frozenset(self.fields),
            retention_days=self.retention_days,
            not_after=self.valid_until,
        )

    @field_validator("provider_url")
    @classmethod
    def _plain_https(cls, url: str) -> str:
        """A provider's DSP address: https://HOST[:PORT][/PATH], nothing else in it."""
        plain_https(url)
        return url


class DspTransferPublic(BaseModel):
    """A transfer over the DSP binding: our id, the pids, our role, its state, how far it
    got (`offset`: rows committed by a pull; `received`: rows this run received,
    pulled or live), why its data plane stopped (`error`, empty when it did not), what
    it waits for to open it again and why (`waiting`: a stream slot at a busy provider,
    a provider gone away, a new data address; empty when it does not wait) and how
    often it tried to open it again after a failure (`reconnects`)."""

    transfer_id: str
    provider_pid: str
    consumer_pid: str
    role: str
    peer: str
    agreement_id: str
    state: str
    offset: int
    received: int
    delivery: str
    error: str
    waiting: str
    reconnects: int = 0
    #: why it was suspended or ended (a provider's refusal: ``refused by the provider: ...``)
    reason: str | None = None


class DspTransferBody(Body):
    agreement_id: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)
    ]


class DspControlBody(Body):
    reason: Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")] = ""


TransferId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]


def _transfers(ctx: Any) -> Any:
    from qdspace.node.dsp.transfer_consumer import DspTransfers

    transfers = ctx.dsp_transfers
    if not isinstance(transfers, DspTransfers):
        raise DspNotServed("this node runs no DSP listener (set dsp_port)")
    return transfers


async def _public(transfers: Any, transfer_id: str) -> DspTransferPublic:
    from qdspace.node.dsp.transfer_process import pids

    row, process, delivery = await run_in_threadpool(transfers.status, transfer_id)
    provider_pid, consumer_pid = pids(row)
    return DspTransferPublic(
        transfer_id=row.local_id,
        provider_pid=provider_pid,
        consumer_pid=consumer_pid,
        role=row.role,
        peer=row.peer_id,
        agreement_id=process.agreement_id,
        state=process.state.value,
        offset=process.offset,
        received=delivery.received,
        delivery=delivery.address.delivery if delivery.address is not None else "",
        error=delivery.error,
        waiting=delivery.waiting,
        reconnects=delivery.reconnects,
        reason=process.reason,
    )


def _reach(ctx: NodeContext) -> ProviderReach | None:
    """The providers a hosted member's staff may name (`node.dsp.providers`): the DSP
    endpoints of the directory it follows and its static peers' hosts, as they are now;
    None on a node of its own (``caller_files`` unset: its operator names any)."""
    if ctx.caller_files is None:
        return None
    held = ctx.follower.held if ctx.follower is not None else None
    entries = held.entries if held is not None else ()
    published = [e.endpoints["dsp"] for e in entries if "dsp" in e.endpoints]
    peers = ctx.peers
    static = [a for a in map(peers.static_address, peers.names) if a is not None]
    return ProviderReach.of(published, static)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/dsp", tags=["dsp"], dependencies=[Depends(require_operator)])

    @api.post("/negotiations", status_code=201, response_model=DspNegotiationStarted)
    async def negotiate(body: NegotiateBody, ctx: Ctx) -> DspNegotiationStarted:
        consumer = ctx.dsp
        if not isinstance(consumer, DspConsumer):
            raise DspNotServed("this node runs no DSP listener (set dsp_port)")
        started = await consumer.negotiate(
            body.provider_url, body.dataset_id, body.narrowing(), _reach(ctx)
        )
        return DspNegotiationStarted(**started)

    @api.post("/transfers", status_code=201, response_model=DspTransferPublic)
    async def transfer(body: DspTransferBody, ctx: Ctx) -> DspTransferPublic:
        transfers = _transfers(ctx)
        row, _process = await transfers.request(body.agreement_id)
        return await _public(transfers, row.local_id)

    @api.get("/transfers/{transfer_id}", response_model=DspTransferPublic)
    async def transfer_status(transfer_id: TransferId, ctx: Ctx) -> DspTransferPublic:
        return await _public(_transfers(ctx), transfer_id)

    def control(verb: str, kind: str) -> None:
        async def move(
            transfer_id: TransferId, ctx: Ctx, body: DspControlBody | None = None
        ) -> DspTransferPublic:
            transfers = _transfers(ctx)
            await transfers.control(transfer_id, kind, body.reason if body else "")
            return await _public(transfers, transfer_id)

        api.add_api_route(
            f"/transfers/{{transfer_id}}/{verb}",
            move,
            methods=["POST"],
            response_model=DspTransferPublic,
            name=f"dsp_transfer_{verb}",
        )

    for verb, kind in (
        ("suspend", "suspension"),
        ("resume", "start"),
        ("terminate", "termination"),
    ):
        control(verb, kind)

    return api
