"""Ledger pages: anchoring status and batches, a record's proof, a dropped file's verdict.

The status is the anchorer's (as ``/v1/ledger/status`` with ``probe=false``: the page
must not wait on a slow chain), the batches are the queue's anchored ones, a proof is
`node.api.regulator.proof_public` and a dropped proof or passport is checked by
`node.api.regulator.verify_posted`, the regulator's own verification: the operator sees
what a regulator would see. The drop zone posts the file's JSON with the session's CSRF
header; a file that is too large (413), not JSON (400), or not a proof or passport (the
regulator's verification status, 4xx) is answered with a fragment that says so, and a
proof or passport that does not hold is a 200 with the INVALID verdict and its reason.

The chain's URL, and the anchorer's last error that may name it, are shown redacted
(`qdspace.util.redact`): a hosted endpoint's URL carries its API key, and a page ends up
in screenshots and tickets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from qdspace.ledger.leaves import KIND_CODES
from qdspace.ledger.proofs import PROOF_DEPTH
from qdspace.ledger.queue_schema import ANCHORED
from qdspace.node.console.render import Console, Endpoint
from qdspace.util.json_depth import loads as bounded_json
from qdspace.util.redact import redact_url, redact_url_in

#: the newest anchored batches the page lists
BATCHES_SHOWN = 50
#: a dropped document larger than this is no proof or passport of ours
MAX_DOCUMENT = 1 << 20


def download_name(kind: str, ref_id: str) -> str:
    """The proof file's name: ASCII letters, digits and ``-_.`` of the record id (often a
    peer's), the rest ``_``. A header is Latin-1: a record id in another script (``检查-1``,
    which ``isalnum`` lets through) made the download link a 400."""
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in ref_id)
    return f"proof-{kind}-{kept[:80]}.json"


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx

    def ledger() -> Any:
        if ctx.ledger is None:
            raise HTTPException(503, "this node anchors to no chain (no ledger.json)")
        return ctx.ledger

    def overview() -> dict[str, Any]:
        held = ledger()
        batches = held.queue.batches(ANCHORED, newest=BATCHES_SHOWN)[::-1]
        url, status = held.settings.rpc_url, held.anchorer.status()
        if status.last_error:
            status = replace(status, last_error=redact_url_in(status.last_error, url))
        return {
            "anchoring": status,
            "rpc_url": redact_url(url),
            "contract": held.client.address,
            "batches": [
                {
                    "id": b.id,
                    "kind": b.kind,
                    "leaves": b.leaf_count,
                    "seq": f"{b.seq_from}-{b.seq_to}",
                    "root": "0x" + b.root.hex(),
                    "tx": "" if b.tx_hash is None else "0x" + b.tx_hash.hex(),
                    "block": b.block_number,
                    "anchored_at": b.anchored_at,
                }
                for b in batches
            ],
        }

    async def ledger_page(request: Request) -> Response:
        view = await run_in_threadpool(overview)
        return console.page(request, "ledger.html", "ledger", kinds=list(KIND_CODES), **view)

    def lookup(kind: str, ref_id: str) -> Any:
        from qdspace.node.api.regulator import proof_public

        if kind not in KIND_CODES:
            raise HTTPException(404, f"kind: {kind!r} is none of {', '.join(KIND_CODES)}")
        if not ref_id or len(ref_id) > 256 or not ref_id.isprintable():
            raise HTTPException(400, "record id: 1 to 256 printable characters")
        held = ledger()
        return proof_public(
            held.queue, held.client, held.load_record, kind, ref_id, anchorer_of=held.anchorer_of
        )

    async def proof_page(request: Request) -> Response:
        kind = request.query_params.get("kind", "")
        ref_id = request.query_params.get("ref_id", "").strip()
        proof = await run_in_threadpool(lookup, kind, ref_id)
        document = json.dumps(proof.proof.model_dump(mode="json"), indent=2)
        return console.page(
            request, "_verdict.html", proof=proof, verdict=proof.verdict, document=document
        )

    async def proof_file(request: Request) -> Response:
        kind = request.query_params.get("kind", "")
        ref_id = request.query_params.get("ref_id", "").strip()
        proof = await run_in_threadpool(lookup, kind, ref_id)
        body = json.dumps(proof.proof.model_dump(mode="json"), indent=2)
        return Response(
            body,
            media_type="application/json",
            headers={
                "content-disposition": f'attachment; filename="{download_name(kind, ref_id)}"',
                "cache-control": "no-store",
                "x-content-type-options": "nosniff",
            },
        )

    async def verify(request: Request) -> Response:
        from qdspace.node.api.regulator import verify_posted

        def refused(status: int, reason: str) -> Response:
            return console.page(request, "_dropped.html", status=status, valid=False, reason=reason)

        body = b""
        async for chunk in request.stream():  # counted while it arrives, not held whole
            body += chunk
            if len(body) > MAX_DOCUMENT:
                return refused(
                    413, f"file too large (a proof or passport is under {MAX_DOCUMENT >> 10} kB)"
                )
        try:
            document = bounded_json(body, limit=PROOF_DEPTH)
        except (UnicodeDecodeError, ValueError):
            return refused(400, "not a JSON document (drop the proof's .json file or a passport)")
        if not isinstance(document, dict):
            return refused(400, "not a proof or passport object")
        held = ledger()
        try:
            result = await run_in_threadpool(verify_posted, document, held.client, held.anchorer_of)
        except HTTPException as exc:  # not a document of ours: the answer says why
            return refused(exc.status_code, str(exc.detail))
        verdict = result.verdict
        return console.page(
            request,
            "_dropped.html",
            valid=verdict.valid,
            reason=verdict.reason,
            doc_type=result.type,
            checks=verdict.checks,
        )

    return [
        ("/ledger", ledger_page, "GET"),
        ("/ledger/proof", proof_page, "GET"),
        ("/ledger/proof.json", proof_file, "GET"),
        ("/ledger/verify", verify, "POST"),
    ]
