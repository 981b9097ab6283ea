"""Operator routes of the DSP binding: ``POST /v1/dsp/negotiations`` starts a negotiation
with any DSP provider through the node's consumer side (`node.dsp.consumer`)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from pydantic import BaseModel, StringConstraints, field_validator

from qdspace.node.api.deps import Ctx, require_operator
from qdspace.node.dsp.consumer import DspConsumer
from qdspace.node.errors import PeerError


class DspNegotiationStarted(BaseModel):
    """A negotiation sent to a DSP provider: our process id, the provider's, and who
    the provider is (read from the certificate its listener presented)."""

    negotiation_id: str
    provider_pid: str
    provider: str


class NegotiateBody(BaseModel):
    provider_url: Annotated[
        str, StringConstraints(min_length=9, max_length=2048, pattern=r"^https://[!-~]+$")
    ]
    dataset_id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]

    @field_validator("provider_url")
    @classmethod
    def _plain_https(cls, url: str) -> str:
        """A provider's DSP address: https://HOST[:PORT][/PATH], nothing else in it."""
        parts = urlsplit(url)
        if not parts.hostname or parts.username or parts.password:
            raise ValueError("must be https://HOST[:PORT][/PATH] without user or password")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or a fragment")
        try:
            parts.port  # noqa: B018 (a port out of range or not a number raises here)
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return url


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/dsp", tags=["dsp"], dependencies=[Depends(require_operator)])

    @api.post("/negotiations", status_code=201, response_model=DspNegotiationStarted)
    async def negotiate(body: NegotiateBody, ctx: Ctx) -> DspNegotiationStarted:
        consumer = ctx.dsp
        if not isinstance(consumer, DspConsumer):
            raise PeerError("this node runs no DSP listener (set dsp_port)")
        return DspNegotiationStarted(**await consumer.negotiate(body.provider_url, body.dataset_id))

    return api
