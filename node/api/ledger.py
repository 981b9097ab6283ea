"""REST routes over the node's ledger: the operator's ``/v1/ledger/...`` (operator
listener) and the regulator's ``/v1/regulator/...`` (regulator listener).

The ledger itself (settings, anchorer, QDM sweep) is `qdspace.node.runtime.ledger`, which
imports no web framework; this module only adapts it. A node without a chain mounts no
operator ledger routes (404) and answers every regulator route 503, after the regulator
credential is checked: a caller without one learns nothing about the node's anchoring.

The chain client, the passport and the regulator's router import web3 and eth_account
(with py_ecc's pairing constants computed at import): about a third of a node's start-up.
They are imported here only when a node has a chain, inside the functions that mount its
routes, so a node without one (a host's tenants, chain-less members) never pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Response
from pydantic import BaseModel

from qdspace.ledger.errors import LedgerError
from qdspace.ledger.leaves import KIND_CODES
from qdspace.node.api.deps import PageRequest, decode_cursor, require_operator
from qdspace.node.api.problems import Problem
from qdspace.node.api.regulator_auth import regulator_dependency
from qdspace.node.context import NodeContext
from qdspace.node.errors import AnchoringBlocked
from qdspace.node.runtime.ledger import NodeLedger, node_ledger, probe_chain
from qdspace.util.redact import redact_url, redact_url_in

if TYPE_CHECKING:
    from qdspace.ledger.passport import Passport

#: how long ``/v1/ledger/status`` waits for the chain before it calls it unreachable
PROBE_TIMEOUT_S = 2.0


class LedgerStatusPublic(BaseModel):
    """For the operator: what waits, what is anchored, whether the chain answers.

    ``chain_reachable`` is the answer of a live probe made for this request (with a
    ``PROBE_TIMEOUT_S`` timeout) unless the caller asked for ``probe=false``; then it
    is what the last anchoring attempt saw, which can be minutes old (issue 21: a
    stopped chain was reported reachable until the next anchoring failed).
    ``chain_checked`` says which of the two it is.
    """

    address: str
    #: as shown anywhere (`qdspace.util.redact`): a hosted endpoint's URL carries its API key
    rpc_url: str
    contract: str
    pending: dict[str, int]
    batches: dict[str, int]
    chain_reachable: bool
    chain_checked: str  # "now" (live probe) or "last anchoring attempt"
    latest_block: int | None = None
    probe_ms: float | None = None
    probe_error: str | None = None
    last_error: str | None


class LeafPublic(BaseModel):
    """One queued leaf."""

    kind: str
    ref_id: str
    seq: int
    leaf_hash: str
    anchored: bool


class FlushPublic(BaseModel):
    """Outcome of an operator's flush."""

    swept_rows: int
    flushed: bool
    status: LedgerStatusPublic


def mount_ledger_routes(app: FastAPI, ctx: NodeContext) -> None:
    """The operator's ``/v1/ledger/...``, on a node that anchors (none otherwise: 404)."""
    ledger = node_ledger(ctx)
    if ledger is not None:
        mount_operator_routes(app, ledger)


def mount_regulator_routes(app: FastAPI, ctx: NodeContext) -> None:
    """``/v1/regulator/...`` (regulator credential, read-only), on the regulator listener.
    A node without a chain answers every one 503, after the credential is checked."""
    ledger = node_ledger(ctx)
    require = regulator_dependency(ctx.keys.trust, ctx.revocations, ctx.keys.identity.member_id)
    if ledger is None:

        @app.api_route(
            "/v1/regulator/{rest:path}",
            methods=["GET", "POST"],
            dependencies=[Depends(require)],
            tags=["regulator"],
            response_model=Problem,
            status_code=503,
        )
        def no_ledger(rest: str) -> Problem:
            raise HTTPException(503, "this node anchors to no chain (no ledger.json)")

        return
    from qdspace.ledger.passport import issue_passport  # web3: only on a node with a chain
    from qdspace.node.api.regulator import regulator_router

    member_id = ctx.keys.identity.member_id

    def issue(from_block: int | None, to_block: int | None) -> Passport:
        return issue_passport(
            ledger.queue,
            ledger.client,
            ctx.keys.signing_key,
            member_id,
            ledger.anchorer.signer.address,
            from_block,
            to_block,
        )

    app.include_router(
        regulator_router(
            queue=ledger.queue,
            client=ledger.client,
            require_regulator=require,
            record_loader=ledger.load_record,
            passport_issuer=issue,
            anchorer_of=ledger.anchorer_of,
        )
    )


def mount_operator_routes(app: FastAPI, ledger: NodeLedger) -> None:
    """``/v1/ledger/status``, ``/v1/ledger/leaves/{kind}`` and ``/v1/ledger/flush``."""
    from qdspace.ledger.client import LedgerClient  # web3: only on a node with a chain

    # its own client: a short timeout, and no cached state shared with the anchorer
    prober = LedgerClient(ledger.settings.rpc_url, ledger.client.address, timeout_s=PROBE_TIMEOUT_S)
    operator = [Depends(require_operator)]

    def status(probe: bool = True) -> LedgerStatusPublic:
        st = ledger.anchorer.status()
        client = ledger.client
        seen = probe_chain(prober, client.expected_chain_id, client.held) if probe else None
        return LedgerStatusPublic(
            address=st.address,
            rpc_url=redact_url(ledger.settings.rpc_url),
            contract=ledger.client.address,
            pending=st.pending,
            batches=st.batches,
            chain_reachable=st.chain_reachable if seen is None else seen.reachable,
            chain_checked="last anchoring attempt" if seen is None else "now",
            latest_block=None if seen is None else seen.latest_block,
            probe_ms=None if seen is None else round(seen.ms, 1),
            probe_error=None if seen is None else seen.error,
            last_error=redact_url_in(st.last_error, ledger.settings.rpc_url)
            if st.last_error
            else None,
        )

    @app.get(
        "/v1/ledger/status",
        response_model=LedgerStatusPublic,
        dependencies=operator,
        tags=["ledger"],
    )
    def ledger_status(probe: bool = True) -> LedgerStatusPublic:
        """Queue and chain health of this node's anchoring.

        The chain is asked now (at most ``PROBE_TIMEOUT_S``); ``probe=false`` returns
        what the last anchoring attempt saw instead, without touching the chain.
        """
        return status(probe)

    @app.get(
        "/v1/ledger/leaves/{kind}",
        response_model=list[LeafPublic],
        dependencies=operator,
        tags=["ledger"],
    )
    def ledger_leaves(
        kind: str,
        response: Response,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> list[LeafPublic]:
        """The latest ``limit`` leaves of ``kind`` this node queued, newest first (pages
        of ``limit`` by ``cursor``)."""
        if kind not in KIND_CODES:
            raise HTTPException(404, f"unknown kind {kind!r}; one of: {', '.join(KIND_CODES)}")
        page = PageRequest(limit, 0 if cursor is None else decode_cursor(cursor))
        # the queue answers the newest n: ask for one page beyond this one to know if more wait
        recent = ledger.queue.recent(kind, page.offset + limit + 1)
        seqs = [leaf.seq for leaf in recent]
        spans = ledger.queue.anchored_spans(kind, min(seqs), max(seqs)) if seqs else []
        leaves = [
            LeafPublic(
                kind=leaf.kind,
                ref_id=leaf.ref_id,
                seq=leaf.seq,
                leaf_hash="0x" + leaf.leaf_hash.hex(),
                anchored=any(lo <= leaf.seq <= hi for lo, hi in spans),
            )
            for leaf in recent
        ]
        return page.take(leaves, response)

    @app.post(
        "/v1/ledger/flush", response_model=FlushPublic, dependencies=operator, tags=["ledger"]
    )
    def ledger_flush(
        timeout_s: Annotated[float, Query(gt=0, le=300)] = 60.0,
    ) -> FlushPublic:
        """Sweep new QDM rows and anchor everything queued now (waits up to ``timeout_s``)."""
        swept = ledger.sweeper.sweep()
        try:
            flushed = ledger.anchorer.flush(timeout_s)
        except LedgerError as exc:  # e.g. WrongChain: the configuration, not the request
            raise AnchoringBlocked(f"anchoring cannot proceed: {exc}") from None
        return FlushPublic(swept_rows=swept, flushed=flushed, status=status())
