"""The operator-API client: one class that calls a running node over HTTPS.

The CLI, the demo and the tests all talk to a node through its operator API
(``/v1/...``, a bearer token). Each used to build its own ``httpx.Client`` and write
its own "status >= 400? read ``detail``" check, six copies with four different
error messages. :class:`OperatorClient` is the one place: one method per route they
use, one check that turns an RFC 9457 problem answer into a :class:`ClientError`
(status, title, detail), and one way to find a node -- by its directory (the run
file the node publishes on start, ``DIR/run/runtime.json``, and ``DIR/operator.token``)
or by address and token, so a command can reach a node on another machine.

The node's API speaks only TLS, and the client always verifies it: against the CA file
the run file names (the space CA, which issued the member certificate the node
presents), a ``ca_file`` given for a remote node (``--ca-file`` / ``QDSPACE_CA_FILE``),
or the system's trust store when neither is given (an operator-provided certificate
from a public CA). A regulator verifies a member's regulator listener against its own
copy of the space CA (`OperatorClient.for_regulator`).

Most commands (``catalog``, ``negotiate``, ``contracts``, ``order close``, ``fl join``'s
negotiation) only talk to a node that is already running: the node holds the keys,
the stores and the peer channels. Such a command needs an address, a token and an
HTTP client -- not the server stack. This module is therefore kept to the standard
library at import time; ``httpx`` is imported when a client is built. Importing
``node.run`` here would cost seconds on every command (uvicorn, FastAPI, gRPC,
SQLAlchemy, web3), which is what issue 21 measured.

Answers are returned as decoded JSON (dicts and lists): the client is a thin,
typed door to the routes, not a second model of the API. Finding a node, verifying its
TLS and reading its failures live in `node.client_transport`; the names callers use
are re-exported here (``__all__``). The DSP binding's routes and the federated jobs'
are features of their own (`node.client_dsp` as ``client.dsp``, `node.client_federation`
as ``client.federation``), as are quality investigations
(`node.client_investigations` as ``client.investigations``).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from qdspace.node.client_dsp import DspCalls
from qdspace.node.client_federation import FederationCalls
from qdspace.node.client_investigations import InvestigationCalls
from qdspace.node.client_transport import (
    DEFAULT_TIMEOUT_S,
    ClientError,
    NodeNotRunning,
    NodeUnreachable,
    http_client,
    locate,
    operator_client,
    problem_of,
    runtime_file,
    tls_verification,
)

if TYPE_CHECKING:
    import httpx

    from qdspace.node.identity.member import MemberKeys

#: environment variables naming a node to call when no ``--dir`` is given
API_URL_ENV = "QDSPACE_API_URL"
TOKEN_ENV = "QDSPACE_TOKEN"
#: a file holding the operator token (preferred over ``QDSPACE_TOKEN``: no secret in the env)
TOKEN_FILE_ENV = "QDSPACE_TOKEN_FILE"
#: the CA certificate (PEM) to verify a remote node's API with
CA_FILE_ENV = "QDSPACE_CA_FILE"

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ClientError",
    "NodeNotRunning",
    "NodeUnreachable",
    "OperatorClient",
    "http_client",
    "locate",
    "operator_client",
    "problem_of",
    "runtime_file",
    "tls_verification",
]

JSON = Any  # a decoded JSON answer
Rows = list[dict[str, Any]]


class OperatorClient:
    """A node's operator API: one method per route, every failure a :class:`ClientError`."""

    def __init__(
        self,
        api_url: str,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        ca_file: Path | None = None,
        ca_pem: bytes | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.http = http_client(
            self.api_url, token, timeout, transport, ca_file=ca_file, ca_pem=ca_pem
        )
        self.dsp = DspCalls(self)  # ``/v1/dsp``: trading with Dataspace Protocol connectors
        self.federation = FederationCalls(self)  # ``/v1/federation``: jobs, member sessions
        self.investigations = InvestigationCalls(self)  # ``/v1/investigations``: cases

    @classmethod
    def from_directory(cls, directory: Path, timeout: float = DEFAULT_TIMEOUT_S) -> OperatorClient:
        """The client of the node running in ``directory`` (its run file and token)."""
        import httpx  # noqa: F401  (the transport first: a command's start-up cost is paid here)

        api_url, token, ca_file = locate(directory)
        return cls(api_url, token, timeout=timeout, ca_file=ca_file)

    @classmethod
    def for_regulator(
        cls, keys: MemberKeys, regulator_url: str, timeout: float = 60.0
    ) -> OperatorClient:
        """A client on a member's regulator listener (``regulator`` in its run file)
        carrying a fresh regulator credential for it, verified against the space CA."""
        from qdspace.node.identity.credential import issue_credential

        with cls(regulator_url, timeout=timeout, ca_pem=keys.ca_pem) as probe:
            audience = probe.healthz()["member_id"]
        credential = issue_credential(keys, str(audience))
        return cls(regulator_url, credential, timeout=timeout, ca_pem=keys.ca_pem)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the one error check ----------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        """Send one request; the decoded JSON answer, or a :class:`ClientError`."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NodeUnreachable(
                None, type(exc).__name__, f"{self.api_url}: {exc}", method=method, path=path
            ) from None
        if response.status_code >= 400:
            raise problem_of(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                response.status_code,
                "not JSON",
                response.text[:300],
                method=method,
                path=path,
            ) from None

    def _get(self, path: str, **params: Any) -> JSON:
        query = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=query)

    def _post(self, path: str, body: Any = None, **params: Any) -> JSON:
        query = {k: v for k, v in params.items() if v is not None}
        return self.request("POST", path, json=body, params=query)

    # -- node, QDM, peers -------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/healthz")
        return result

    def node(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/v1/node")
        return result

    def qdm_counts(self) -> dict[str, int]:
        result: dict[str, int] = self._get("/v1/qdm/counts")
        return result

    def ingest_rows(self, kind: str, rows: Rows) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/v1/ingest/{kind}", {"rows": rows})
        return result

    def ingest_file(self, kind: str, path: Path) -> dict[str, Any]:
        """Upload a .csv or .jsonl file of ``kind`` rows as it is on disk."""
        media = "text/csv" if path.suffix == ".csv" else "application/x-ndjson"
        result: dict[str, Any] = self.request(
            "POST",
            f"/v1/ingest/{kind}",
            content=path.read_bytes(),
            headers={"content-type": media},
            params={"source": path.name},
        )
        return result

    def hello(self, peer: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/v1/peers/{peer}/hello")
        return result

    def upstream(self, peer: str, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/peers/{peer}/upstream/{batch_id}")
        return result

    # -- contracts --------------------------------------------------------------------------

    def catalog(self, peer: str, kind: str = "") -> Rows:
        result: Rows = self._get(f"/v1/contracts/catalog/{peer}", kind=kind)
        return result

    def negotiate(
        self,
        peer: str,
        asset_id: str,
        purposes: list[str],
        *,
        orders: list[str] | None = None,
        fields: list[str] | None = None,
        retention_days: int | None = None,
        valid_until: str | None = None,
        as_offered: bool = False,
    ) -> dict[str, Any]:
        """Negotiate (request, counter-offer, both signatures); the negotiation's outcome."""
        body: dict[str, Any] = {"peer": peer, "asset_id": asset_id, "purposes": purposes}
        if as_offered:
            body["as_offered"] = True
        else:
            body |= {
                "orders": orders or None,
                "fields": fields or None,
                "retention_days": retention_days,
                "valid_until": valid_until,
            }
        result: dict[str, Any] = self._post("/v1/contracts/negotiations", body)
        return result

    def agreements(
        self,
        role: str | None = None,
        asset_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> Rows:
        """The agreements held (in ``role``, of ``asset_id``), in the order agreed (the
        newest first if asked), at most ``limit``."""
        result: Rows = self._get(
            "/v1/contracts/agreements",
            role=role,
            asset_id=asset_id,
            limit=limit,
            newest_first=newest_first or None,
        )
        return result

    def agreement(self, agreement_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/contracts/agreements/{agreement_id}")
        return result

    def explain(self, agreement_id: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/contracts/agreements/{agreement_id}/explain"
        result: dict[str, Any] = self._post(path, body)
        return result

    def agreement_odrl(self, agreement_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/contracts/agreements/{agreement_id}/odrl")
        return result

    def terminate(self, agreement_id: str, reason: str) -> dict[str, Any]:
        path = f"/v1/contracts/agreements/{agreement_id}/terminate"
        result: dict[str, Any] = self._post(path, {"reason": reason})
        return result

    def transfer(
        self,
        agreement_id: str,
        purpose: str,
        *,
        order_id: str | None = None,
        fields: list[str] | None = None,
        since_last: bool = False,
        batch_rows: int = 0,
    ) -> dict[str, Any]:
        body = {
            "agreement_id": agreement_id,
            "purpose": purpose,
            "order_id": order_id,
            "fields": fields or None,
            "since_last": since_last,
            "batch_rows": batch_rows,
        }
        result: dict[str, Any] = self._post("/v1/contracts/transfers", body)
        return result

    def resume_transfer(self, transfer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/v1/contracts/transfers/{transfer_id}/resume")
        return result

    def negotiation(self, negotiation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/contracts/negotiations/{negotiation_id}")
        return result

    def transfers(self, limit: int | None = None, newest_first: bool = False) -> Rows:
        result: Rows = self._get(
            "/v1/contracts/transfers", limit=limit, newest_first=newest_first or None
        )
        return result

    def received(
        self,
        agreement_id: str,
        order_id: str | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """A page of the rows held under an agreement (the first, or the one after
        ``cursor``: the ``next_cursor`` of the page before; None on the last)."""
        result: dict[str, Any] = self._get(
            "/v1/contracts/received",
            agreement_id=agreement_id,
            order_id=order_id,
            limit=limit,
            cursor=cursor,
        )
        return result

    def received_changes(self, agreement_id: str | None = None) -> Rows:
        result: Rows = self._get("/v1/contracts/received/changes", agreement_id=agreement_id)
        return result

    def outbox(self) -> dict[str, Any]:
        """What the node owes its peers, by peer (``GET /v1/outbox``)."""
        result: dict[str, Any] = self._get("/v1/outbox")
        return result

    def retry_outbox(self, peer_id: str) -> dict[str, Any]:
        """Queue again what was set aside after `peer_id`'s refusals
        (``POST /v1/outbox/{peer_id}/retry``)."""
        result: dict[str, Any] = self._post(f"/v1/outbox/{quote(peer_id, safe='')}/retry", {})
        return result

    def withdraw(self, kind: str, key: dict[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/v1/contracts/withdrawals", {"kind": kind, "key": key})
        return result

    def subscribe(self, agreement_id: str, purpose: str, **terms: Any) -> dict[str, Any]:
        """Subscribe to a live stream; ``terms``: characteristic, usl, baseline_size."""
        body = {"agreement_id": agreement_id, "purpose": purpose, **terms}
        result: dict[str, Any] = self._post("/v1/contracts/subscriptions", body)
        return result

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/contracts/subscriptions/{subscription_id}")
        return result

    def subscriptions(self) -> Rows:
        result: Rows = self._get("/v1/contracts/subscriptions")
        return result

    def end_subscription(self, subscription_id: str) -> dict[str, Any]:
        """End a subscription for good (no restart resumes it)."""
        path = f"/v1/contracts/subscriptions/{subscription_id}"
        result: dict[str, Any] = self.request("DELETE", path)
        return result

    def alerts(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/v1/contracts/alerts")
        return result

    def close_order(self, order_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/v1/contracts/orders/{order_id}/close")
        return result

    def closures(self) -> Rows:
        result: Rows = self._get("/v1/contracts/closures")
        return result

    def sweep(self, horizon_hours: float | None = None) -> dict[str, Any]:
        path = "/v1/contracts/retention/sweep"
        result: dict[str, Any] = self._post(path, horizon_hours=horizon_hours)
        return result

    def purge(self, confirm: str) -> dict[str, Any]:
        """Leave the data space (irreversible); `confirm` is the node's member id."""
        result: dict[str, Any] = self._post("/v1/contracts/purge", {"confirm": confirm})
        return result

    def receipts(self, limit: int | None = None, newest_first: bool = False) -> Rows:
        result: Rows = self._get(
            "/v1/contracts/receipts", limit=limit, newest_first=newest_first or None
        )
        return result

    def duties(
        self,
        limit: int | None = None,
        attention_first: bool = False,
        status: str | None = None,
    ) -> Rows:
        """The deletion duties (in ``status``): in the order the agreements were made, or
        those needing someone first, at most ``limit``."""
        result: Rows = self._get(
            "/v1/contracts/duties",
            limit=limit,
            attention_first=attention_first or None,
            status=status,
        )
        return result

    def duty_counts(self) -> dict[str, int]:
        """How many deletion duties stand in each status, and the total."""
        result: dict[str, int] = self._get("/v1/contracts/duties/counts")
        return result

    # -- root-cause traces -------------------------------------------------------------------

    def start_trace(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a trace (``StartBody`` of ``/v1/traces``); answers at once with its id."""
        result: dict[str, Any] = self._post("/v1/traces", body)
        return result

    def trace(self, trace_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/traces/{trace_id}")
        return result

    def trace_report(self, trace_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/traces/{trace_id}/report")
        return result

    # -- the demo clock --------------------------------------------------------------------

    def set_clock(self, offset_days: float) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/v1/contracts/clock", {"offset_days": offset_days})
        return result

    # -- ledger, regulator, inspection ------------------------------------------------------

    def ledger_flush(self, timeout_s: float) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/v1/ledger/flush", timeout_s=timeout_s)
        return result

    def ledger_status(self, probe: bool | None = None) -> dict[str, Any]:
        """Anchoring health; ``probe=False``: the last anchoring attempt's view of the chain."""
        result: dict[str, Any] = self._get("/v1/ledger/status", probe=probe)
        return result

    def ledger_leaves(self, kind: str, limit: int | None = None) -> Rows:
        result: Rows = self._get(f"/v1/ledger/leaves/{kind}", limit=limit)
        return result

    def regulator_proof(self, kind: str, ref_id: str) -> dict[str, Any]:
        """A record's inclusion proof and the member node's own verdict (regulator only)."""
        result: dict[str, Any] = self._get(f"/v1/regulator/proofs/{kind}/{ref_id}")
        return result

    def regulator_passport(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/v1/regulator/passport")
        return result

    def inspection_models(self) -> Rows:
        result: Rows = self._get("/v1/inspection/models")
        return result

    def inspection_drift(self) -> JSON:
        return self._get("/v1/inspection/drift")

    def inspection_explanations(self) -> Rows:
        result: Rows = self._get("/v1/inspection/explanations")
        return result
