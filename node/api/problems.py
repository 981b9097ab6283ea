"""RFC 9457 problem details: the one table that turns an error into an HTTP answer.

Routes are thin adapters: they call one handler and let domain errors rise. This module
decides, in one place, what each error means for the caller: 4xx for anything the
caller got wrong (an unknown id, a malformed value, a request outside an agreement),
502/503/504 when a peer or the chain fails, and a bare 500 only for the node's own
bugs, whose details go to the node's log and never to the caller.

Every answer is ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail`` and ``instance`` (the request path); a validation problem adds ``errors``, one
entry per offending field with its path (``body.purposes.0``, ``query.limit``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qdspace.connector.contract_errors import ContractError
from qdspace.connector.errors import ConnectorError, IngestFileError, StorageError, UnknownKind
from qdspace.connector.genealogy import NotYourBatch, UnknownBatch
from qdspace.connector.ingest import UnsupportedCharset
from qdspace.federation.errors import FederationError
from qdspace.inference.registry import RegistryError
from qdspace.ledger.errors import (
    ChainUnavailable,
    DocumentFormatError,
    LedgerError,
    NotAnchored,
    UnknownLeaf,
    WrongChain,
)
from qdspace.ledger.leaves import UnknownKind as UnknownLeafKind
from qdspace.node.errors import ConfigError, IdentityError, NodeError, PeerError, UnknownPeerError
from qdspace.node.runtime.federation_member import SessionConflict

log = logging.getLogger("node.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://qdspace.dev/problems/"
INTERNAL_DETAIL = "the node failed to answer this request; its log names the cause"

#: a gRPC status name (a peer's refusal, or a contract error's `grpc_status`) -> HTTP status
HTTP_OF_GRPC: Mapping[str, int] = {
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 403,
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 502,
}


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


# domain error class -> HTTP status; the most specific class in an error's MRO wins
STATUS_OF_ERROR: Mapping[type[BaseException], int] = {
    UnknownPeerError: 404,
    ConfigError: 400,
    IdentityError: 403,
    UnknownKind: 404,
    UnsupportedCharset: 415,
    IngestFileError: 400,
    StorageError: 503,
    UnknownBatch: 404,
    NotYourBatch: 403,
    RegistryError: 404,
    UnknownLeaf: 404,
    UnknownLeafKind: 404,
    NotAnchored: 409,
    DocumentFormatError: 422,
    WrongChain: 400,
    ChainUnavailable: 503,
    LedgerError: 400,
    # a job's terms, a member's data or a model that does not fit: the caller's to fix
    FederationError: 400,
    SessionConflict: 409,
}

# a family whose status is named by the error itself (a gRPC status name), else fallback
_BY_CODE: Sequence[tuple[type[BaseException], Callable[[Any], str | None], int]] = (
    (ContractError, lambda e: e.grpc_status, 500),
    (PeerError, lambda e: e.code, 502),
)

# what any other error says about whose fault it is, by the built-in it also derives from
BUILTIN_STATUS: Sequence[tuple[type[BaseException], int]] = (
    (PermissionError, 403),
    (LookupError, 404),
    (ValueError, 400),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error by the tables above; 500 for the node's own bugs."""
    if isinstance(exc, ApiProblem):
        return exc.status
    for cls in type(exc).__mro__:
        if cls in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[cls]
    for family, code_of, fallback in _BY_CODE:
        if isinstance(exc, family):
            return HTTP_OF_GRPC.get(code_of(exc) or "", fallback)
    for builtin, status in BUILTIN_STATUS:
        if isinstance(exc, builtin):
            return status
    return 500


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
    phrase = _phrase(status)
    body = Problem(
        type=TYPE_BASE + phrase.lower().replace(" ", "-"),
        title=title or phrase,
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
        if status >= 500 and not isinstance(exc, ApiProblem | PeerError | LedgerError):
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
        RegistryError,
        Exception,
    ):
        app.add_exception_handler(family, domain_error)


def _safe(exc: BaseException) -> bool:
    """Whether a 5xx error's message is meant for the caller (a peer or chain failure)."""
    return isinstance(exc, ApiProblem | PeerError | LedgerError)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
