"""FastAPI app factory: routes decode, call one handler, encode; errors map in one place."""

from __future__ import annotations

import hmac
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from connector.errors import ConnectorError
from connector.ingest import KINDS, IngestReport, ingest_file
from node.api.inspection import create_inspection_router
from node.api.models import (
    BatchPublic,
    Health,
    HelloPublic,
    IngestResult,
    IngestRows,
    NodeInfo,
    RowErrorPublic,
    UpstreamPublic,
)
from node.context import NodeContext
from node.errors import ConfigError, NodeError, PeerError

_bearer = HTTPBearer(auto_error=False)

# what a peer's gRPC status means for the operator calling through this node
PEER_STATUS = {
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 403,
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 409,
    "DEADLINE_EXCEEDED": 504,
}

RAW_SUFFIX = {"text/csv": ".csv", "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl"}


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
    )


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status},
        status_code=status,
        media_type="application/problem+json",
    )


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(
        title=f"qdspace node {ctx.settings.name}",
        version="0.1.0",
        description="Operator and management API of a qdspace connector node.",
    )

    def operator(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials, ctx.operator_token):
            raise HTTPException(401, "operator token required (Authorization: Bearer ...)")

    Operator = Depends(operator)

    @app.exception_handler(PeerError)
    async def _peer_error(request: Request, exc: PeerError) -> JSONResponse:
        return _problem(PEER_STATUS.get(exc.code or "", 502), "peer call failed", str(exc))

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return _problem(400, "bad request", str(exc))

    @app.exception_handler(ConnectorError)
    async def _connector_error(request: Request, exc: ConnectorError) -> JSONResponse:
        status = 400 if isinstance(exc, ValueError) else 500
        return _problem(status, type(exc).__name__, str(exc))

    @app.exception_handler(NodeError)
    async def _node_error(request: Request, exc: NodeError) -> JSONResponse:
        return _problem(500, type(exc).__name__, str(exc))

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
            peers=dict(ctx.settings.peers),
        )

    @app.get("/v1/qdm/counts", dependencies=[Operator], tags=["qdm"])
    def counts() -> dict[str, int]:
        return ctx.store.counts()

    @app.get("/v1/qdm/dictionary", dependencies=[Operator], tags=["qdm"])
    def dictionary() -> Any:
        from connector.dictionary import default_dictionary

        return default_dictionary().to_json()

    @app.post(
        "/v1/ingest/{kind}", response_model=IngestResult, dependencies=[Operator], tags=["qdm"]
    )
    async def ingest(kind: str, request: Request) -> IngestResult:
        if kind not in KINDS:
            raise HTTPException(404, f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
        media = request.headers.get("content-type", "application/json").split(";")[0].strip()
        body = await request.body()
        if media == "application/json":
            try:
                payload = IngestRows.model_validate_json(body)
            except ValueError as exc:
                raise HTTPException(422, f"body is not {{'rows': [...]}}: {exc}") from None
            report = await _run(
                ctx.store.ingest_rows,
                kind,
                [(i + 1, row) for i, row in enumerate(payload.rows)],
                source=payload.source,
            )
            return report_to_public(report)
        suffix = RAW_SUFFIX.get(media)
        if suffix is None:
            raise HTTPException(415, f"content type {media} not supported: use JSON, CSV or JSONL")
        source = request.query_params.get("source", f"upload{suffix}")
        return report_to_public(await _run(_ingest_bytes, ctx, kind, body, suffix, source))

    @app.get("/v1/peers", dependencies=[Operator], tags=["peers"])
    def peers() -> dict[str, str]:
        return dict(ctx.settings.peers)

    @app.post(
        "/v1/peers/{name}/hello",
        response_model=HelloPublic,
        dependencies=[Operator],
        tags=["peers"],
    )
    async def hello(name: str) -> HelloPublic:
        result = await ctx.peers.hello(name)
        return HelloPublic(**result.__dict__)

    @app.get(
        "/v1/peers/{name}/upstream/{batch_id}",
        response_model=UpstreamPublic,
        dependencies=[Operator],
        tags=["trace"],
    )
    async def peer_upstream(name: str, batch_id: str) -> UpstreamPublic:
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
    from node.anchoring import mount_regulator_routes

    mount_regulator_routes(app, ctx)
    from node.api.contracts import contracts_router

    app.include_router(contracts_router(ctx, Operator))
    return app


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


def _ingest_bytes(
    ctx: NodeContext, kind: str, body: bytes, suffix: str, source: str
) -> IngestReport:
    with tempfile.TemporaryDirectory(prefix="qdspace-upload-") as tmp:
        path = Path(tmp) / (Path(source).name if source.endswith(suffix) else f"upload{suffix}")
        path.write_bytes(body)
        report = ingest_file(ctx.store, path, kind)
    return report
