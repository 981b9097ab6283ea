"""DSP 2025-1 transfer-process messages <-> the node's transfer facts, as pure functions.

Why a module of its own: the transfer half of the DSP HTTPS binding drives the same
transfer state machine (`connector.transfer`) as the gRPC wire; this is its codec, the
transfer sibling of `connector.dsp_negotiation`. It writes each message in the compacted
form its DSP 2025-1 schema requires (TransferRequestMessage, TransferStartMessage with
the data address, TransferProcess, and the suspension, completion and termination
messages) and reads a peer's message into checked plain values, refusing anything else
with `DspMessageError` naming the field.

The data address is EDC's "EDR" (endpoint data reference): an HTTP pull endpoint and a
short-lived bearer token, as endpoint properties. Only pulls are served
(`HttpData-PULL`): a request for another format, or one that brings a data address of
its own (a push destination), is refused with `PushRefused`.

Message ids, which DSP has not, are made by the binding (`node.dsp.transfer_process`);
the local transfer id is the consumer's pid on both sides (see there why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qdspace.connector import dsp_codec as codec
from qdspace.policies.odrl.jsonld import DSP_CONTEXT
from qdspace.util.urls import host_port, https_origin

HTTP_PULL = codec.HTTP_PULL
ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"
AUTH_TYPE = "bearer"
#: how the data address's endpoint delivers: `BATCHES` ends, `STREAM` follows live rows
BATCHES = "batches"
STREAM = "stream"
STATES = frozenset({"REQUESTED", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED"})
MAX_TOKEN = 1024


class PushRefused(codec.DspMessageError):
    """A transfer this node does not serve: only HTTP pulls (``HttpData-PULL``)."""


@dataclass(frozen=True)
class TransferAsk:
    """What a TransferRequestMessage asks for (checked)."""

    consumer_pid: str
    agreement_id: str
    format: str
    callback: str


@dataclass(frozen=True)
class DataAddress:
    """Where and how to pull: the endpoint, its bearer token and its delivery mode."""

    endpoint: str
    token: str
    delivery: str = BATCHES


def _ctx() -> list[str]:
    return [DSP_CONTEXT]


# ------------------------------------------------------------------ writing


def request_message(
    consumer_pid: str, agreement_id: str, callback: str, fmt: str = HTTP_PULL
) -> dict[str, Any]:
    return {
        "@context": _ctx(),
        "@type": "TransferRequestMessage",
        "consumerPid": consumer_pid,
        "agreementId": agreement_id,
        "format": fmt,
        "callbackAddress": callback,
    }


def data_address(address: DataAddress) -> dict[str, Any]:
    def prop(name: str, value: str) -> dict[str, str]:
        return {"@type": "EndpointProperty", "name": name, "value": value}

    return {
        "@type": "DataAddress",
        "endpointType": ENDPOINT_TYPE,
        "endpoint": address.endpoint,
        "endpointProperties": [
            prop("authorization", address.token),
            prop("authType", AUTH_TYPE),
            prop("delivery", address.delivery),
        ],
    }


def start_message(
    provider_pid: str, consumer_pid: str, address: DataAddress | None
) -> dict[str, Any]:
    body = codec.pids_message("TransferStartMessage", provider_pid, consumer_pid)
    if address is not None:
        body["dataAddress"] = data_address(address)
    return body


def process(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    if state not in STATES:
        raise codec.DspMessageError("$.state", f"{state!r} is not a transfer state")
    return {
        "@context": _ctx(),
        "@type": "TransferProcess",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state,
    }


def completion_message(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return codec.pids_message("TransferCompletionMessage", provider_pid, consumer_pid)


def _coded(
    kind: str, provider_pid: str, consumer_pid: str, code: str, reason: str
) -> dict[str, Any]:
    text = reason[: codec.MAX_REASON] or code.lower()
    return codec.pids_message(kind, provider_pid, consumer_pid, code=code, reason=[text])


def suspension_message(provider_pid: str, consumer_pid: str, reason: str) -> dict[str, Any]:
    return _coded("TransferSuspensionMessage", provider_pid, consumer_pid, "SUSPENDED", reason)


def termination_message(provider_pid: str, consumer_pid: str, reason: str) -> dict[str, Any]:
    return _coded("TransferTerminationMessage", provider_pid, consumer_pid, "TERMINATED", reason)


def error(code: str, reason: str, provider_pid: str = "", consumer_pid: str = "") -> dict[str, Any]:
    return codec.error("TransferError", code, reason, provider_pid, consumer_pid)


# ------------------------------------------------------------------ reading


def read_request(body: Any) -> TransferAsk:
    """A consumer's TransferRequestMessage; anything but an HTTP pull is `PushRefused`."""
    message = codec.read_message(body, "TransferRequestMessage")
    fmt = codec.text(message, "format")
    if fmt != HTTP_PULL:
        raise PushRefused("$.format", f"only {HTTP_PULL} transfers are served here, not {fmt!r}")
    if message.get("dataAddress") is not None:
        raise PushRefused("$.dataAddress", "push transfers are not served: pull instead")
    return TransferAsk(
        codec.text(message, "consumerPid"),
        codec.text(message, "agreementId"),
        fmt,
        codec.callback(message, required=True),
    )


def read_pids(body: Any, kind: str) -> tuple[str, str, Mapping[str, Any]]:
    """(providerPid, consumerPid, message) of a transfer message of type `kind`."""
    message = codec.read_message(body, kind)
    return codec.text(message, "providerPid"), codec.text(message, "consumerPid"), message


def read_data_address(message: Mapping[str, Any]) -> DataAddress | None:
    """The data address of a TransferStartMessage (None: a resume without a new one)."""
    address = message.get("dataAddress")
    if address is None:
        return None
    where = "$.dataAddress"
    if not isinstance(address, Mapping) or address.get("@type") != "DataAddress":
        raise codec.DspMessageError(where, "expected a DataAddress object")
    endpoint = codec.text(address, "endpoint", limit=codec.MAX_URL)
    if not endpoint.startswith("https://"):
        raise codec.DspMessageError(f"{where}.endpoint", "must be an https:// URL")
    props = address.get("endpointProperties")
    if not isinstance(props, list) or len(props) > 16:
        raise codec.DspMessageError(f"{where}.endpointProperties", "expected up to 16 properties")
    values: dict[str, str] = {}
    for index, item in enumerate(props):
        if not isinstance(item, Mapping):
            raise codec.DspMessageError(f"{where}.endpointProperties[{index}]", "not an object")
        name = codec.text(item, "name", limit=64)
        values[name] = codec.text(item, "value", limit=MAX_TOKEN)
    token = values.get("authorization")
    if token is None:
        raise codec.DspMessageError(f"{where}.endpointProperties", "no authorization token")
    delivery = values.get("delivery", BATCHES)
    if delivery not in (BATCHES, STREAM):
        raise codec.DspMessageError(f"{where}.endpointProperties", f"delivery {delivery!r}")
    return DataAddress(endpoint, token.removeprefix("Bearer "), delivery)


def check_endpoint(address: DataAddress, provider_url: str) -> None:
    """A data address must be served where the provider's DSP address is: the same
    scheme, host and port (`DspMessageError` at ``$.dataAddress.endpoint`` otherwise).

    The endpoint is the provider's to name, and the consumer then connects to it by
    itself, again after every failure for as long as the transfer runs. Any other host
    would let a member make this node open connections to hosts and ports of its choosing
    (a service inside the consumer's network, a port scan from there) and look up names
    of its choosing. A provider of this kind serves its data plane on its DSP listener
    (``https://<dsp address>/data/<providerPid>``), so a real one always passes.
    """
    want = https_origin(provider_url)
    if want is not None and https_origin(address.endpoint) == want:
        return
    where = provider_url[:200] if want is None else f"https://{host_port(*want)}"
    raise codec.DspMessageError(
        "$.dataAddress.endpoint",
        f"must be served at the provider's DSP address {where}, not {address.endpoint[:200]!r}",
    )
