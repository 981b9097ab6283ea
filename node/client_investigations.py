"""The operator API's quality-investigation routes (``/v1/investigations``), as
``client.investigations``.

An investigation (a quality alert or a joint 8D case opened with a peer) is a feature of
its own: its routes (`node.api.investigations`), its commands (``qdspace investigation``,
`node.cli.investigation`) and the demo's chapter after a trace. Its six calls sat in
`node.client` as ``investigation_*`` methods, which took that file past the size the
house keeps; here they are one small class the client holds, over the client's one
error check (`OperatorClient.request`), as the DSP and federation calls are. Standard
library only at import time, as `node.client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdspace.node.client import OperatorClient

Rows = list[dict[str, Any]]


class InvestigationCalls:
    """``/v1/investigations`` of a node's operator API: cases, their moves and actions."""

    def __init__(self, api: OperatorClient) -> None:
        self._api = api

    def open(self, body: dict[str, Any]) -> dict[str, Any]:
        """Open a quality investigation or alert with a peer (``OpenBody`` of the route)."""
        result: dict[str, Any] = self._api.request("POST", "/v1/investigations", json=body)
        return result

    def list(self) -> Rows:
        result: Rows = self._api.request("GET", "/v1/investigations")
        return result

    def overdue(self) -> Rows:
        """The open corrective actions past their due date, over every case."""
        result: Rows = self._api.request("GET", "/v1/investigations/overdue")
        return result

    def get(self, case_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._api.request("GET", f"/v1/investigations/{case_id}")
        return result

    def move(self, case_id: str, move: str, note: str = "") -> dict[str, Any]:
        """``move``: ack, accept, decline or close."""
        path = f"/v1/investigations/{case_id}/{move}"
        result: dict[str, Any] = self._api.request("POST", path, json={"note": note})
        return result

    def action_done(self, case_id: str, action_id: str, note: str = "") -> dict[str, Any]:
        path = f"/v1/investigations/{case_id}/actions/{action_id}/done"
        result: dict[str, Any] = self._api.request("POST", path, json={"note": note})
        return result
