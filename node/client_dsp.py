"""The operator API's DSP routes (``/v1/dsp``), as ``OperatorClient.dsp``.

Trading with a connector that speaks the Dataspace Protocol 2025-1 is a feature of its
own: its own routes (`node.api.dsp`), its own commands (``qdspace dsp``, `node.cli.dsp`)
and its own process ids. Its calls lived among the gRPC-side contract calls of
`node.client` as ``dsp_*`` methods, so one feature answered to two names in one class
and pushed that file past the size the house keeps. Here they are one small class the
client holds (``node.dsp.negotiate(...)``), over the client's one error check
(`OperatorClient.request`).

Not to be confused with `node.dsp.client`: that is the node's own outgoing DSP client
(HTTPS to another connector's DSP listener); this one calls a node's operator API and
lets the node do the talking. Standard library only at import time, as `node.client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdspace.node.client import OperatorClient


class DspCalls:
    """``/v1/dsp`` of a node's operator API: negotiations and transfers with DSP peers."""

    def __init__(self, api: OperatorClient) -> None:
        self._api = api

    def negotiate(
        self,
        provider_url: str,
        dataset_id: str,
        *,
        purposes: list[str] | None = None,
        orders: list[str] | None = None,
        fields: list[str] | None = None,
        retention_days: int | None = None,
        valid_until: str | None = None,
    ) -> dict[str, Any]:
        """Start a negotiation with a DSP provider, on its published offer or on that offer
        narrowed (``purposes`` and the rest); answers when the provider ACKed."""
        narrowing = {
            "purposes": purposes or None,
            "orders": orders or None,
            "fields": fields or None,
            "retention_days": retention_days,
            "valid_until": valid_until,
        }
        body: dict[str, Any] = {"provider_url": provider_url, "dataset_id": dataset_id}
        body.update({k: v for k, v in narrowing.items() if v is not None})
        result: dict[str, Any] = self._api.request("POST", "/v1/dsp/negotiations", json=body)
        return result

    def transfer(self, agreement_id: str) -> dict[str, Any]:
        """Ask the provider of a DSP agreement for a transfer (pulled in the background)."""
        body = {"agreement_id": agreement_id}
        result: dict[str, Any] = self._api.request("POST", "/v1/dsp/transfers", json=body)
        return result

    def transfer_status(self, transfer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._api.request("GET", f"/v1/dsp/transfers/{transfer_id}")
        return result

    def control(self, transfer_id: str, verb: str, reason: str = "") -> dict[str, Any]:
        """``suspend``, ``resume`` or ``terminate`` a DSP transfer."""
        path = f"/v1/dsp/transfers/{transfer_id}/{verb}"
        result: dict[str, Any] = self._api.request("POST", path, json={"reason": reason})
        return result
