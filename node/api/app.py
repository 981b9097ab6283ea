"""FastAPI app factory: routes decode, call one handler, encode; errors map in one place.

Four layers stand between a caller and a route, each for one reason:

- `node.api.gate.BearerGate` checks the credential from the headers before anything
  reads the body (a dependency would run only after FastAPI parsed it);
- `node.api.gate.BodyLimit` caps the body before it is parsed (ingest has its own,
  larger limit, and spools uploads to disk), `JsonDepthLimit` its nesting;
- `node.api.observe.ObserveRequests` (outermost) gives each request its id and times it;
- `node.api.headers.SecurityHeaders` puts a Content-Security-Policy on every answer
  (the console's pages carry their own);
- `node.api.problems` answers every error as an RFC 9457 problem by the node's fault
  table (`qdspace.node.faults`).

The web console (`qdspace.node.console`) is mounted at ``/console``: its own login and
session cookie, the same listener, the same runtime calls. Being one origin is why the
app serves no Swagger UI or ReDoc page (FastAPI loads their script from a CDN, which
would run with the operator's session; `node.api.headers`): the schema is at
``/openapi.json``.

Routes get the node's parts as typed dependencies (`node.api.deps`: the node context on
``app.state.node``, the contract runtime, the operator, the page asked for) and answer a
response model each.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam

from qdspace.connector.ingest import BULK_BATCH_ROWS, IngestReport, check_kind, ingest_file
from qdspace.node.api.contracts import contracts_router
from qdspace.node.api.defects import defects_router
from qdspace.node.api.deps import require_operator
from qdspace.node.api.dsp import router as dsp_router
from qdspace.node.api.federation import PREFIX as FEDERATION_PREFIX
from qdspace.node.api.federation import START_BODY_LIMIT, federation_router
from qdspace.node.api.gate import (
    INGEST_BODY_LIMIT,
    INGEST_PREFIX,
    BearerGate,
    BodyLimit,
    JsonDepthLimit,
)
from qdspace.node.api.headers import SecurityHeaders
from qdspace.node.api.inspection import create_inspection_router
from qdspace.node.api.investigations import investigations_router
from qdspace.node.api.ledger import mount_ledger_routes
from qdspace.node.api.models import (
    BatchPublic,
    DictionaryEntry,
    Health,
    HelloPublic,
    IngestResult,
    IngestRows,
    NodeInfo,
    RowErrorPublic,
    UpstreamPublic,
)
from qdspace.node.api.observe import mount_observability
from qdspace.node.api.outbox import outbox_router
from qdspace.node.api.problems import (
    ApiProblem,
    BodyTooLarge,
    UnsupportedMediaType,
    install_problem_handlers,
)
from qdspace.node.api.retention import retention_router
from qdspace.node.api.traces import traces_router
from qdspace.node.api.training import create_training_router
from qdspace.node.context import IngestAdmission, NodeContext

RAW_SUFFIX = {"text/csv": ".csv", "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl"}
JSON_MEDIA = "application/json"
#: an upload is spooled to a temporary file in chunks of this size, never held whole
SPOOL_CHUNK = 1 << 20
#: a JSON ingest is parsed whole: its body is held in memory, so it is kept small
JSON_INGEST_LIMIT = 16 << 20
#: JSON ingests held and parsed at once in this process, at most (each its body and a
#: few times that parsed): a managed host's tenants share the process, and each tenant's
#: staff could hold 32 at once, gigabytes between them; one more waits for none, it is
#: refused (429) and CSV or JSON Lines, spooled to disk, is the way for many at once
JSON_INGESTS_AT_ONCE = 4
_json_ingests = threading.BoundedSemaphore(JSON_INGESTS_AT_ONCE)
#: an upload arriving is checked against what may be stored every this many bytes
CHECK_EVERY = 8 << 20
FEDERATION_JOBS = FEDERATION_PREFIX + "/jobs"
PeerName = Annotated[str, PathParam(min_length=1, max_length=128)]


class IngestsBusy(ApiProblem):
    """Every place for a JSON ingest in this process is taken (`JSON_INGESTS_AT_ONCE`)."""

    status = 429


class EmptyUpload(ApiProblem):
    """An ingest upload without a single byte."""


def report_to_public(report: IngestReport) -> IngestResult:
    return IngestResult(
        kind=report.kind,
        source=report.source,
        accepted=report.accepted,
        duplicates=report.duplicates,
        corrected=report.corrected,
        rejected=[
            RowErrorPublic(source=e.source, line=e.line, field=e.field, reason=e.reason)
            for e in report.rejected
        ],
        problems=report.problems,
        refused_lines=report.refused_lines,
    )


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(
        title=f"qdspace node {ctx.settings.name}",
        version="0.1.0",
        description="Operator and management API of a qdspace connector node.",
        docs_url=None,  # no CDN script on the console's origin (`node.api.headers`)
        redoc_url=None,
    )

    app.state.node = ctx  # what `node.api.deps` hands to routes
    Operator = Depends(require_operator)
    install_problem_handlers(app)
    # added innermost first: SecurityHeaders -> BearerGate -> BodyLimit -> JsonDepthLimit
    app.add_middleware(JsonDepthLimit, exempt=(INGEST_PREFIX,))
    app.add_middleware(
        BodyLimit,
        limits={INGEST_PREFIX: INGEST_BODY_LIMIT, FEDERATION_JOBS: START_BODY_LIMIT},
    )
    # the regulator routes are on their own listener (`node.api.regulator_app`)
    app.add_middleware(BearerGate, operator_token=ctx.operator_token)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(
            status="ok",
            name=ctx.settings.name,
            member_id=ctx.keys.identity.member_id,
            role=ctx.settings.role,
            schema_version=ctx.store.schema_version(),
        )

    @app.get("/v1/node", response_model=NodeInfo, dependencies=[Operator], tags=["node"])
    def node_info() -> NodeInfo:
        ident = ctx.keys.identity
        return NodeInfo(
            name=ident.name,
            member_id=ident.member_id,
            role=ident.role,
            space=ctx.settings.space,
            grpc_address=f"{ctx.settings.grpc_host}:{ctx.settings.grpc_port}",
            certificate_fingerprint=ident.fingerprint,
            certificate_not_after=ident.not_after.isoformat(),
            verify_key_hex=ident.verify_key.hex(),
            database=ctx.store.url,
            peers=ctx.peers.addresses(),
            attested_frameworks=ctx.peers.own_frameworks(),
        )

    @app.get("/v1/qdm/counts", dependencies=[Operator], tags=["qdm"])
    def counts() -> dict[str, int]:
        return ctx.store.counts()

    @app.get("/v1/qdm/dictionary", dependencies=[Operator], tags=["qdm"])
    def dictionary() -> list[DictionaryEntry]:
        return [DictionaryEntry.model_validate(e) for e in ctx.store.dictionary.to_json()]

    @app.post(
        "/v1/ingest/{kind}", response_model=IngestResult, dependencies=[Operator], tags=["qdm"]
    )
    async def ingest(kind: str, request: Request) -> IngestResult:
        """Rows as JSON (``{"rows": [...]}``), CSV or JSON Lines (``charset`` honoured)."""
        check_kind(kind)
        media, charset = _media_type(request.headers.get("content-type", JSON_MEDIA))
        admission = ctx.ingest_admission
        declared = request.headers.get("content-length", "")
        if admission is not None and declared.isdigit():  # before a byte of it is read
            await _run(admission.check_upload, int(declared))
        if media == JSON_MEDIA:
            if not _json_ingests.acquire(blocking=False):  # before a byte of it is read
                raise IngestsBusy(
                    f"{JSON_INGESTS_AT_ONCE} JSON ingests are being read here already (each "
                    "is held in memory whole): try again in a moment, or send many rows as "
                    "text/csv or application/x-ndjson (spooled to disk, read in batches)"
                )
            try:
                body = await _json_body(request, admission)
                payload = await _run(IngestRows.model_validate_json, body)  # off the loop
                size = len(body)
                del body  # parsed: the rows are what is held now
                rows = [(i + 1, row) for i, row in enumerate(payload.rows)]
                async with _admitted(ctx, len(rows), size):
                    report = await _run(
                        ctx.store.ingest_rows,
                        kind,
                        rows,
                        source=payload.source,
                        batch_size=BULK_BATCH_ROWS,
                    )
            finally:
                _json_ingests.release()
            return report_to_public(report)
        suffix = RAW_SUFFIX.get(media)
        if suffix is None:
            raise UnsupportedMediaType(
                f"content type {media or '(none)'} is not supported: use application/json, "
                "text/csv or application/x-ndjson"
            )
        source = Path(request.query_params.get("source", f"upload{suffix}")).name
        # on the node's own disk (the one its free-disk check and quotas measure), not
        # the shared temporary folder
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=ctx.directory) as tmp:
            path = Path(tmp) / f"upload{suffix}"
            await _spool(request, path, admission)
            counted = admission is not None and admission.counts_rows
            lines = await _run(_count_lines, path) if counted else 0
            async with _admitted(ctx, lines, path.stat().st_size):
                report = await _run(
                    ingest_file, ctx.store, path, kind, charset=charset, source=source or path.name
                )
        return report_to_public(report)

    @app.get("/v1/peers", dependencies=[Operator], tags=["peers"])
    def peers() -> dict[str, str]:
        return ctx.peers.addresses()

    @app.post(
        "/v1/peers/{name}/hello",
        response_model=HelloPublic,
        dependencies=[Operator],
        tags=["peers"],
    )
    async def hello(name: PeerName) -> HelloPublic:
        result = await ctx.peers.hello(name)
        return HelloPublic(**result.__dict__)

    @app.get(
        "/v1/peers/{name}/upstream/{batch_id}",
        response_model=UpstreamPublic,
        dependencies=[Operator],
        tags=["trace"],
    )
    async def peer_upstream(name: PeerName, batch_id: str) -> UpstreamPublic:
        reply = await ctx.peers.upstream(name, batch_id)

        def pub(b: Any) -> BatchPublic:
            return BatchPublic(
                batch_id=b.batch_id,
                material=b.material,
                kind=b.kind,
                producer=b.producer,
                quantity=b.quantity,
            )

        return UpstreamPublic(batch=pub(reply.batch), parents=[pub(p) for p in reply.parents])

    app.include_router(create_inspection_router(ctx.directory, [Operator]))
    app.include_router(
        create_training_router(ctx.directory, [Operator], ctx.caller_files, ctx.check_kept)
    )
    mount_ledger_routes(app, ctx)
    app.include_router(contracts_router())
    app.include_router(retention_router())
    app.include_router(outbox_router())
    app.include_router(investigations_router())
    app.include_router(traces_router())
    app.include_router(defects_router())
    app.include_router(dsp_router())
    app.include_router(federation_router(ctx, Operator))
    from qdspace.node.console import PREFIX as CONSOLE
    from qdspace.node.console import create_console

    app.mount(CONSOLE, create_console(ctx, CONSOLE), name="console")
    mount_observability(app, ctx)  # probes, /metrics, and the outermost request layer
    return app


def _admitted(ctx: NodeContext, rows: int, size: int) -> AbstractAsyncContextManager[None]:
    """The admission of an ingest (`NodeContext.ingest_admission`), if there is one."""
    if ctx.ingest_admission is None:
        return nullcontext()
    return ctx.ingest_admission.admit(rows, size)


def _count_lines(path: Path) -> int:
    """The lines of an upload: at most that many rows can be new (a quota's upper bound)."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(SPOOL_CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


def _media_type(header: str) -> tuple[str, str | None]:
    """``text/csv; charset=ISO-8859-1`` -> ``("text/csv", "ISO-8859-1")``."""
    media, *params = (part.strip() for part in header.split(";"))
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media.lower(), charset


async def _spool(request: Request, path: Path, admission: IngestAdmission | None) -> None:
    """The request body into ``path`` as it arrives (`BodyLimit` has capped its size),
    refused once it no longer fits what may be stored (`_arriving`)."""
    size = 0
    with path.open("wb") as out:
        async for chunk in _arriving(request, admission):
            size += len(chunk)
            out.write(chunk)
    if size == 0:
        raise EmptyUpload("the upload is empty: send a header line and rows")


async def _json_body(request: Request, admission: IngestAdmission | None) -> bytes:
    """A JSON ingest's body, read up to `JSON_INGEST_LIMIT` (it is parsed whole, into a
    few times its size in memory: larger uploads go as CSV or JSON Lines, which are
    spooled to disk and read in batches), refused as it arrives once it no longer fits
    what may be stored (`_arriving`)."""
    body = bytearray()
    async for chunk in _arriving(request, admission):
        body += chunk
        if len(body) > JSON_INGEST_LIMIT:
            raise BodyTooLarge(
                f"a JSON ingest is at most {JSON_INGEST_LIMIT >> 20} MiB: send larger "
                "uploads as text/csv or application/x-ndjson (spooled to disk, read in "
                "batches)"
            )
    return bytes(body)


async def _arriving(request: Request, admission: IngestAdmission | None) -> AsyncIterator[bytes]:
    """An upload's chunks as they arrive, each taken by the caller before what arrived so
    far is checked against what may be stored (`IngestAdmission.check_upload`, every
    `CHECK_EVERY` bytes)."""
    size = checked = 0
    async for chunk in request.stream():
        yield chunk
        size += len(chunk)
        if admission is not None and size - checked >= CHECK_EVERY:
            await _run(admission.check_upload, size)
            checked = size
