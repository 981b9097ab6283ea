"""The consumer's side of the DSP binding: start a negotiation with any DSP provider.

`DspConsumer.negotiate` asks the provider at a DSP address for a dataset on the offer
its catalog publishes, or on that offer narrowed to what the operator wants (its
purposes, one order, some fields, a shorter retention: `connector.offers.Narrowing`; a
provider of this node's offer form agrees to narrower terms as they stand, as it agrees
to a gRPC request for one order). It learns who the provider is from the certificate its
listener presents (never from what the provider writes about itself), opens the
negotiation locally (unsigned: the DSP form), binds the pids, sends the
ContractRequestMessage and returns; the rest arrives at the callback endpoints
(`node.dsp.app`). The operator API exposes it as ``POST /v1/dsp/negotiations``
(`node.api.dsp`); on a managed host, a tenant's staff reach only the providers its
space publishes, and learn nothing of the host's network from a failure
(`node.dsp.providers`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from nacl.signing import VerifyKey
from starlette.concurrency import run_in_threadpool

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_negotiation as wire
from qdspace.connector.contract_errors import ContractError, UnknownContractError
from qdspace.connector.contract_store import DspProcess, OutboxMessage
from qdspace.connector.dsp_jsonld import normalise
from qdspace.connector.negotiation import (
    ContractRequest,
    Negotiation,
    PartyKeys,
    Role,
    Termination,
    apply,
    open_negotiation,
)
from qdspace.connector.offers import Narrowing, NonStandardPolicyError, narrowed_request
from qdspace.node.dsp.client import DspHttp
from qdspace.node.dsp.providers import ProviderNotReachable, ProviderReach
from qdspace.node.errors import OfferNotNarrowable, PeerError, PeerRefused
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.codec import policy_to_json
from qdspace.policies.model import Policy
from qdspace.policies.odrl.jsonld import MAX_MESSAGE_OBJECTS, check_bounds, decode
from qdspace.policies.odrl.vocab import PolicyKind

logger = logging.getLogger("node.dsp")
T = TypeVar("T")


@dataclass
class DspConsumer:
    runtime: ContractRuntime
    http: DspHttp
    base_url: str

    async def negotiate(
        self,
        provider_url: str,
        dataset_id: str,
        ask: Narrowing | None = None,
        reach: ProviderReach | None = None,
    ) -> dict[str, Any]:
        """Ask for ``dataset_id`` on the offer the provider publishes, or on that offer
        narrowed as ``ask`` says (purposes, orders, fields, retention, an end).

        `reach`: the providers a hosted member's staff may have it call
        (`node.dsp.providers`): any other URL is refused before a connection is opened,
        and a failure to reach one is `ProviderNotReachable`, without the transport's
        detail. None (a node's own operator): any provider, failures as they are."""
        url = provider_url.rstrip("/")
        if reach is not None and not reach.allows(url):
            raise ProviderNotReachable(provider_url)
        discovery = self.http.call("GET", f"{url}/.well-known/dspace-version", None)
        server, _ = await _reached(discovery, provider_url, reach)
        provider = server.member_id
        path = f"{url}/catalog/datasets/{quote(dataset_id, safe='')}"
        _, response = await _reached(self.http.call("GET", path, provider), provider_url, reach)
        if response.status_code == 404:
            raise UnknownContractError(f"DSP {url}: the provider has no dataset {dataset_id!r}")
        if response.status_code != 200:
            raise PeerError(f"DSP {url}: dataset {dataset_id}: HTTP {response.status_code}")
        asked = await run_in_threadpool(_published_offer, url, dataset_id, response)
        if ask is not None:
            try:
                asked = narrowed_request(asked, ask)
            except NonStandardPolicyError as exc:
                raise OfferNotNarrowable(
                    f"DSP {url}: dataset {dataset_id}: its offer is not of the form this node "
                    f"narrows ({exc}): ask for it as published, without terms"
                ) from None
        pid = f"urn:uuid:{uuid.uuid4()}"
        me, now = self.runtime.me.member_id, self.runtime.clock.now()
        request = ContractRequest(wire.message_id(pid, "request"), pid, me, asked, now)
        store = self.runtime.store
        opened = open_negotiation(request, Role.CONSUMER, signed=False)
        row = DspProcess(
            "negotiation",
            pid,
            Role.CONSUMER.value,
            provider,
            pid,
            url,
            asked_json=policy_to_json(asked),
        )
        await run_in_threadpool(store.open_dsp_negotiation, opened, row)  # one commit
        body = codec.request_message(pid, asked, self.base_url)
        try:
            sent = self.http.post(f"{url}/negotiations/request", provider, body)
            ack = await _reached(sent, provider_url, reach)
        except PeerRefused as exc:  # the provider holds no such negotiation: ours ends here
            await run_in_threadpool(self._refused, server, pid, exc.reason)
            raise
        provider_pid = await run_in_threadpool(_provider_pid, url, ack)
        await run_in_threadpool(store.dsp.set_peer_pid, "negotiation", pid, provider_pid)
        return {"negotiation_id": pid, "provider_pid": provider_pid, "provider": provider}

    def _refused(self, provider: MemberIdentity, pid: str, reason: str) -> None:
        """Our copy of a negotiation the provider refused to open: TERMINATED, saying why
        (else it would wait in REQUESTED for an answer that never comes)."""
        keys = PartyKeys(VerifyKey(provider.verify_key), self.runtime.verify_key)
        at = self.runtime.clock.now()
        why = f"refused by the provider: {reason}"

        def step(before: Negotiation) -> tuple[Negotiation, Sequence[OutboxMessage]]:
            at_least = max(at, before.updated_at)
            message = Termination(f"{pid}:dsp-refused", pid, provider.member_id, why, at_least)
            return apply(before, message, keys), ()

        try:
            self.runtime.store.update_negotiation(pid, step)
        except ContractError as exc:  # (it finished meanwhile): the refusal is still told
            logger.warning("DSP negotiation %s refused, left as it is: %s", pid, exc)


async def _reached(call: Awaitable[T], url: str, reach: ProviderReach | None) -> T:
    """`call`'s result; on a hosted member (`reach` given), a failure to reach the
    provider (but a refusal its server answered) is `ProviderNotReachable`, its detail
    only in the log (the host's: its network is what the detail tells of)."""
    try:
        return await call
    except PeerRefused:
        raise
    except PeerError as exc:
        if reach is None:
            raise
        logger.warning("DSP provider %s not reached: %s", url[:200], exc)
        raise ProviderNotReachable(url) from None


def _published_offer(url: str, dataset_id: str, response: httpx.Response) -> Policy:
    """The first offer of the provider's dataset; what a provider sends that the node
    cannot read is the provider's failure (`PeerError`, 502), not the operator's."""
    try:
        data = decode(response.content)
        check_bounds(data, max_objects=MAX_MESSAGE_OBJECTS)
        offers = data.get("hasPolicy") if isinstance(data, dict) else None
        offers = offers if isinstance(offers, list) else [offers] if offers else []
        if not offers:
            raise PeerError(f"DSP {url}: dataset {dataset_id} has no offer")
        message_like = {"@context": data.get("@context"), "offer": offers[0]}
        return codec.read_policy(message_like, "offer", PolicyKind.OFFER, target=dataset_id)
    except ValueError as exc:
        raise PeerError(f"DSP {url}: dataset {dataset_id}: unreadable offer: {exc}") from None


def _provider_pid(url: str, ack: httpx.Response) -> str:
    """The provider's pid from its acknowledgement, in whatever JSON-LD form it wrote it."""
    try:
        return codec.text(normalise(decode(ack.content), "ContractNegotiation"), "providerPid")
    except ValueError as exc:
        raise PeerError(f"DSP {url}: unreadable acknowledgement: {exc}") from None
