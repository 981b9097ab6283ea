"""RFC 9457 problem details: how an error becomes an HTTP answer.

Routes are thin adapters: they call one handler and let domain errors rise. This module
answers them through the node's one fault table (`qdspace.node.faults`, shared with
the gRPC services and the CLI), which decides what each error means for the caller:
4xx for anything the caller got wrong (an unknown id, a malformed value, a request
outside an agreement), 502/503/504 when a peer or the chain fails, and a bare 500 only
for the node's own bugs, whose details go to the node's log and never to the caller.

Every answer is ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail`` and ``instance`` (the request path); a validation problem adds ``errors``, one
entry per offending field with its path (``body.purposes.0``, ``query.limit``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qdspace.connector.errors import ConnectorError
from qdspace.federation.errors import FederationError
from qdspace.inference.errors import InferenceError
from qdspace.ledger.errors import LedgerError
from qdspace.node import faults
from qdspace.node.errors import NodeError, PeerError, QuotaError
from qdspace.policies.errors import PolicyError

log = logging.getLogger("node.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = faults.PROBLEM_TYPE_BASE
INTERNAL_DETAIL = "the node failed to answer this request; its log names the cause"


class FieldProblem(BaseModel):
    """One offending field of a request: where (``body.purposes.0``) and what is wrong."""

    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details body."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path this problem is about")
    errors: list[FieldProblem] | None = None


class ApiProblem(Exception):
    """An error that already knows its HTTP status (raised by the API's own edges)."""

    status = 400

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status


class NotAuthenticated(ApiProblem):
    """No usable credential: missing, malformed, not ASCII or not the right one."""

    status = 401


class BodyTooLarge(ApiProblem):
    """A request body over the route's size limit."""

    status = 413


class UnsupportedMediaType(ApiProblem):
    """A request body in a content type (or charset) the route does not read."""

    status = 415


class PeerTimeout(ApiProblem):
    """A peer did not answer in the time the route waits for it."""

    status = 504


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error by the node's one fault table (`qdspace.node.faults`);
    an `ApiProblem` knows its own; 500 for the node's own bugs."""
    if isinstance(exc, ApiProblem):
        return exc.status
    return faults.http_status(exc)


def problem_response(
    status: int,
    detail: str,
    instance: str,
    *,
    title: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The ``application/problem+json`` answer for ``status``."""
    body = Problem(
        type=faults.problem_type(status),
        title=title or faults.problem_title(status),
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def problem_bytes(status: int, detail: str, instance: str) -> bytes:
    """The body of `problem_response`, for pure ASGI code that sends its own messages."""
    return bytes(problem_response(status, detail, instance).body)


def field_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """Pydantic's error list as ``field`` paths and messages (never echoing the input)."""
    return [
        FieldProblem(
            field=".".join(str(part) for part in e.get("loc", ())) or "body",
            message=str(e.get("msg", "invalid")),
        )
        for e in errors
    ]


def install_problem_handlers(app: FastAPI) -> None:
    """Every error the app can meet, answered as a problem by the table above."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        return problem_response(exc.status_code, detail, request.url.path, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = field_problems(exc.errors())
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(422, detail, request.url.path, errors=errors)

    async def body_model_error(request: Request, exc: Exception) -> JSONResponse:
        """A body a route validated itself (e.g. ingest rows) fails like a declared one."""
        assert isinstance(exc, ValidationError)
        errors = field_problems([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(422, detail, request.url.path, errors=errors)

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500 and not _safe(exc):
            log.error("api %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        detail = str(exc) if status < 500 or _safe(exc) else INTERNAL_DETAIL
        return problem_response(status, detail or _phrase(status), request.url.path)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValidationError, body_model_error)
    for family in (
        ApiProblem,
        NodeError,
        ConnectorError,
        LedgerError,
        FederationError,
        InferenceError,  # the model registry, an own image set (DatasetError)
        # the rest of the table's families: answered here, not by Starlette's server-error
        # middleware, which re-raises after answering (uvicorn then drops the connection)
        PolicyError,
        ValueError,
        PermissionError,
        LookupError,
        Exception,
    ):
        app.add_exception_handler(family, domain_error)


def _safe(exc: BaseException) -> bool:
    """Whether a 5xx error's message is meant for the caller (a peer or chain failure)."""
    return isinstance(exc, ApiProblem | PeerError | LedgerError | QuotaError)


def _phrase(status: int) -> str:
    return faults.problem_title(status)
