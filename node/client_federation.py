"""The operator API's federated-learning routes (``/v1/federation``), as ``client.federation``.

Federated jobs are a feature of their own: their own routes (`node.api.federation`),
their own commands (``qdspace fl``, `node.cli.federation`) and their own objects (jobs
published on a coordinator, member sessions the node runs). Their calls lived at the
end of `node.client` as five ``federation_*`` methods and a module-level
``ensure_job_agreement``, so one feature answered to two kinds of name in a file past
the size the house keeps. Here they are one small class the client holds
(``node.federation.join(...)``), over the client's one error check
(`OperatorClient.request`), as the DSP calls are (`node.client_dsp`).

``ensure_agreement`` sits here, not among the contract calls, because it is the job's
step: the contract a member needs before it may train (the job's published offer, asked
for exactly as offered). Standard library only at import time, as `node.client`: the
federation room (NumPy) is imported only when that step runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qdspace.node.errors import NodeError

if TYPE_CHECKING:
    from qdspace.node.client import OperatorClient

Rows = list[dict[str, Any]]


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the ones left out (``None``): absent, not ``null``, on the wire."""
    return {k: v for k, v in values.items() if v is not None}


class FederationCalls:
    """``/v1/federation`` of a node's operator API: jobs and this member's sessions."""

    def __init__(self, api: OperatorClient) -> None:
        self._api = api

    def start(
        self, terms: dict[str, Any], initial: bytes | None = None, coordinator: str | None = None
    ) -> dict[str, Any]:
        """Publish a job (terms as ``JobSpec.to_dict``; ``initial``: QDFP1 bytes, else zeros)."""
        import base64

        body = {
            "terms": terms,
            "initial": None if initial is None else base64.b64encode(initial).decode(),
            "coordinator": coordinator,
        }
        result: dict[str, Any] = self._api.request("POST", "/v1/federation/jobs", json=body)
        return result

    def jobs(self, coordinator: str | None = None) -> Rows:
        query = _given({"coordinator": coordinator})
        result: Rows = self._api.request("GET", "/v1/federation/jobs", params=query)
        return result

    def job(
        self,
        job_id: str,
        coordinator: str | None = None,
        *,
        seen: dict[str, Any] | None = None,
        wait_s: float | None = None,
    ) -> dict[str, Any]:
        """A job's status; given ``seen`` (a status), once the job moved past it."""
        since = {k: seen[k] for k in ("round", "attempt", "phase", "version")} if seen else {}
        query = _given({"coordinator": coordinator, "wait_s": wait_s, **since})
        path = f"/v1/federation/jobs/{job_id}"
        result: dict[str, Any] = self._api.request("GET", path, params=query)
        return result

    def join(self, job_id: str, data: str, **options: Any) -> dict[str, Any]:
        """Join a job as this node's member; ``options``: coordinator, test, deploy,
        image_size, poll_s. The session answers at once and runs in the node."""
        body = {"job_id": job_id, "data": data, **_given(options)}
        result: dict[str, Any] = self._api.request("POST", "/v1/federation/sessions", json=body)
        return result

    def session(self, session_id: str, after: int = 0) -> dict[str, Any]:
        """A member session: its events after the first ``after``, state and result."""
        path = f"/v1/federation/sessions/{session_id}"
        query = _given({"after": after or None})
        result: dict[str, Any] = self._api.request("GET", path, params=query)
        return result

    def ensure_agreement(self, coordinator: str, asset_id: str) -> tuple[str, bool]:
        """An agreement in force with ``coordinator`` for a job's asset, negotiated if missing.

        The member node (its contract store and peer channels) asks for exactly the job's
        published offer (model updates for training, no raw data, no redistribution) and
        countersigns. Returns the agreement id and whether it was negotiated now. Used by
        ``qdspace fl join`` and the demo.
        """
        from qdspace.federation.agreements import TRAINING_PURPOSE
        from qdspace.node.member_ids import peer_name

        for held in self._api.agreements(role="consumer", asset_id=asset_id):
            if (
                held["asset_id"] == asset_id
                and held["role"] == "consumer"
                and held["active"]
                and peer_name(held["provider_id"]) == coordinator
            ):
                return str(held["agreement_id"]), False
        result = self._api.negotiate(coordinator, asset_id, [TRAINING_PURPOSE], as_offered=True)
        if result["state"] != "FINALIZED":
            raise NodeError(
                f"negotiation {result['negotiation_id']} for {asset_id} with {coordinator} "
                f"{result['state']}: {result['reason']}"
            )
        return str(result["agreement_id"]), True
