"""Dataspace Protocol 2025-1 messages <-> the node's negotiation messages, as pure functions.

Why a codec of its own: the DSP HTTPS binding is a second transport over the same
state machines (`connector.negotiation`) and runtime as the gRPC wire; this module is
its `x_to_proto`/`x_from_proto`: it builds each DSP message and response in the
compacted JSON-LD form the DSP 2025-1 schemas require, and reads a peer's message into
checked plain values (types, pid lengths), refusing anything else with
`DspMessageError` naming the field; a message in another JSON-LD form is first
compacted with the node's contexts (`connector.dsp_jsonld`). Policies inside messages go through
`policies.odrl` (JSON-LD processing with the packaged contexts only, bounded input) and
back into the node's form (`policies.odrl.node_form`).

Two pids per process: the local state machine keeps one id (ours), the peer's pid
travels beside it; message ids, which DSP has not, are derived from our pid and the
message kind (each kind occurs once per process over this binding), so a retried DSP
message is recognised as the same one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from qdspace.connector.dsp_jsonld import normalise
from qdspace.policies.canonical import format_datetime, parse_datetime
from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy
from qdspace.policies.odrl.bridge import to_odrl
from qdspace.policies.odrl.codec import parse_jsonld_policy, policy_to_jsonld
from qdspace.policies.odrl.jsonld import DSP_CONTEXT, POLICY_CONTEXT
from qdspace.policies.odrl.node_form import from_odrl
from qdspace.policies.odrl.vocab import PolicyKind
from qdspace.util.urls import host_port, https_origin, split_host_port

VERSION = "2025-1"
MAX_PID = 128
MAX_URL = 2048
MAX_REASON = 500
#: the transfer format of the HTTP data plane (EDC's name for an HTTP pull)
HTTP_PULL = "HttpData-PULL"


class DspMessageError(ValueError):
    """A DSP message that is not what the binding allows; `where` is its JSON path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


# ------------------------------------------------------------------ writing


def _ctx(policies: bool = False) -> list[str]:
    return list(POLICY_CONTEXT) if policies else [DSP_CONTEXT]


def version_document(path: str) -> dict[str, Any]:
    """``/.well-known/dspace-version``: the one version this node speaks, and where."""
    return {"protocolVersions": [{"version": VERSION, "path": path, "binding": "HTTPS"}]}


def message_offer(offer: Policy) -> dict[str, Any]:
    """An offer inside a negotiation message (with its ``target``, without a context)."""
    return policy_to_jsonld(to_odrl(offer), embedded=True)


def dataset(asset_id: str, offers: Sequence[Policy], title: str, endpoint: str) -> dict[str, Any]:
    return {
        "@id": asset_id,
        "@type": "Dataset",
        "title": title,
        "hasPolicy": [policy_to_jsonld(to_odrl(o), catalog=True, embedded=True) for o in offers],
        "distribution": [
            {
                "@type": "Distribution",
                "format": HTTP_PULL,
                "accessService": {"@id": "dsp", "@type": "DataService", "endpointURL": endpoint},
            }
        ],
    }


def catalog(participant: str, datasets: Sequence[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    return {
        "@context": _ctx(True),
        "@id": f"urn:catalog:{participant}",
        "@type": "Catalog",
        "participantId": participant,
        "dataset": list(datasets),
        "service": [{"@id": "dsp", "@type": "DataService", "endpointURL": endpoint}],
    }


def dataset_response(data: dict[str, Any]) -> dict[str, Any]:
    return {"@context": _ctx(True), **data}


def negotiation(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    return {
        "@context": _ctx(),
        "@type": "ContractNegotiation",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state,
    }


def error(
    kind: str, code: str, reason: str, provider_pid: str = "", consumer_pid: str = ""
) -> dict[str, Any]:
    """A DSP error body (`kind`: ``ContractNegotiationError``, ``TransferError``,
    ``CatalogError``); the pids are required by the negotiation and transfer schemas."""
    body: dict[str, Any] = {
        "@context": _ctx(),
        "@type": kind,
        "code": code,
        "reason": [reason[:MAX_REASON]],
    }
    if kind != "CatalogError":
        body["providerPid"] = provider_pid or "unknown"
        body["consumerPid"] = consumer_pid or "unknown"
    return body


def request_message(consumer_pid: str, offer: Policy, callback: str) -> dict[str, Any]:
    return {
        "@context": _ctx(True),
        "@type": "ContractRequestMessage",
        "consumerPid": consumer_pid,
        "offer": message_offer(offer),
        "callbackAddress": callback,
    }


def counter_request_message(provider_pid: str, consumer_pid: str, offer: Policy) -> dict[str, Any]:
    """A consumer's counter-request: its terms in answer to the provider's offer, on the
    process both know (``providerPid``; no callback address, the schema's other branch)."""
    return {
        "@context": _ctx(True),
        "@type": "ContractRequestMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "offer": message_offer(offer),
    }


def offer_message(provider_pid: str, consumer_pid: str, offer: Policy) -> dict[str, Any]:
    return {
        "@context": _ctx(True),
        "@type": "ContractOfferMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "offer": message_offer(offer),
    }


def agreement_message(
    provider_pid: str, consumer_pid: str, agreement: Policy, agreed_at: datetime
) -> dict[str, Any]:
    odrl = policy_to_jsonld(to_odrl(agreement), embedded=True)
    odrl["timestamp"] = format_datetime(agreed_at)
    return {
        "@context": _ctx(True),
        "@type": "ContractAgreementMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "agreement": odrl,
    }


def pids_message(kind: str, provider_pid: str, consumer_pid: str, **extra: Any) -> dict[str, Any]:
    """A message that carries only the pids (verification, events, termination) and `extra`."""
    return {
        "@context": _ctx(),
        "@type": kind,
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        **extra,
    }


def event_message(provider_pid: str, consumer_pid: str, event: str) -> dict[str, Any]:
    return pids_message(
        "ContractNegotiationEventMessage", provider_pid, consumer_pid, eventType=event
    )


def termination_message(provider_pid: str, consumer_pid: str, reason: str) -> dict[str, Any]:
    return pids_message(
        "ContractNegotiationTerminationMessage",
        provider_pid,
        consumer_pid,
        code="TERMINATED",
        reason=[reason[:MAX_REASON] or "terminated"],
    )


# ------------------------------------------------------------------ reading


def read_message(body: Any, kind: str) -> Mapping[str, Any]:
    """A peer's DSP message of type `kind`, in any JSON-LD form the specification allows,
    read into the compacted form this codec reads (`dsp_jsonld.normalise`)."""
    return normalise(body, kind)


def text(body: Mapping[str, Any], key: str, *, limit: int = MAX_PID, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise DspMessageError(f"$.{key}", f"must be a printable string of 1 to {limit} characters")
    return value


def callback(body: Mapping[str, Any], *, required: bool) -> str:
    url = text(body, "callbackAddress", limit=MAX_URL, required=required)
    if url and not url.startswith("https://"):
        raise DspMessageError("$.callbackAddress", "must be an https:// URL")
    return url.rstrip("/")


def check_callback(url: str, published: str | None, member: str) -> None:
    """A consumer's callback address (`callback`) must be served at ``published``, the
    ``host:port`` its member's directory entry names for its DSP listener; None (the
    member publishes none) refuses it too. `DspMessageError` at ``$.callbackAddress``
    saying where it must be. See `node.dsp.callbacks` for why."""
    origin = https_origin(url)
    if published is None:
        raise DspMessageError(
            "$.callbackAddress",
            f"member {member[:128]} publishes no DSP address in the member directory, so no "
            "callback address of it is taken (its node sets advertise_dsp, or a dsp_host "
            "other members reach, and publishes it)",
        )
    if origin is not None and host_port(*origin) == published.lower():
        return
    raise DspMessageError(
        "$.callbackAddress",
        f"must be served at https://{published}, the DSP address member {member[:128]} "
        f"publishes in the member directory, not {url[:200]!r}",
    )


def check_static_callback(url: str, configured: str | None, name: str) -> None:
    """With static peers (no directory): a consumer's callback address must be on the
    host its peer address ``configured`` names (as written; any port); None (not a
    static peer) refuses it. See `node.dsp.callbacks`."""
    shown = name[:128]
    if configured is None:
        raise DspMessageError(
            "$.callbackAddress",
            f"member {shown} is not among this node's peers, so its callback address cannot "
            "be checked (its operator adds it: qdspace node peer-add)",
        )
    host = split_host_port(configured)[0].lower()
    origin = https_origin(url)
    if origin is not None and origin[0] == host:
        return
    raise DspMessageError(
        "$.callbackAddress",
        f"must be an https address on {host}, where this node's peers list member {shown} "
        f"({configured}), not {url[:200]!r}",
    )


def reason(body: Mapping[str, Any]) -> str:
    """The peer's reasons, joined, as one line of at most `MAX_REASON` printable
    characters: kept with the process and shown to the operator, so a control character
    (a NUL, which PostgreSQL refuses in any string; a line break forging a log line)
    becomes a space."""
    reasons = body.get("reason", [])
    items = reasons if isinstance(reasons, list) else [reasons]
    out = "; ".join(str(r if not isinstance(r, Mapping) else r.get("@value", "")) for r in items)
    out = "".join(c if c.isprintable() else " " for c in out[:MAX_REASON]).strip()
    return out or "terminated by the peer"


def _contexts(body: Mapping[str, Any]) -> tuple[str, ...]:
    context = body.get("@context")
    return (context,) if isinstance(context, str) else tuple(context or ())


def read_policy(body: Mapping[str, Any], key: str, kind: PolicyKind, target: str = "") -> Policy:
    """The policy under `key`, in the node's form (an offer without its own context reads
    with the message's)."""
    document = body.get(key)
    if not isinstance(document, Mapping):
        raise DspMessageError(f"$.{key}", "expected a policy object")
    try:
        odrl = parse_jsonld_policy(document, default_context=_contexts(body), default_kind=kind)
        if odrl.kind is not kind:
            raise DspMessageError(f"$.{key}.@type", f"expected an {kind}, got {odrl.kind}")
        return from_odrl(odrl, target=target or None)
    except PolicyError as exc:
        raise DspMessageError(f"$.{key}", str(exc)) from None


def agreement_time(body: Mapping[str, Any]) -> datetime:
    agreement = body.get("agreement")
    stamp = agreement.get("timestamp") if isinstance(agreement, Mapping) else None
    try:
        return parse_datetime(stamp) if isinstance(stamp, str) else _missing()
    except ValueError as exc:
        raise DspMessageError("$.agreement.timestamp", str(exc)) from None


def _missing() -> datetime:
    raise DspMessageError("$.agreement.timestamp", "an agreement carries its timestamp")
