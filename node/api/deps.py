"""Typed dependencies of the operator API: the node, its contract runtime, the caller, paging.

A route states what it needs in its signature (``rt: Runtime``, ``page: Paging``) and
FastAPI hands it over; no route reaches into a closure or a string-keyed bag for the
node's parts. The node context lives on ``app.state.node`` (set once by
`qdspace.node.api.app.create_app`); everything else derives from it.

Paging is by opaque cursor: a list route takes ``limit`` (absent: everything, as before
cursors existed) and ``cursor`` (from a previous page), answers the page, and names the
cursor of the next page in the ``X-Next-Cursor`` response header (absent on the last
page). The bodies of list routes stay JSON arrays, so callers that read a whole list
need no change.
A cursor is base64url JSON that callers must not build or read: the node may change what
it holds (today the position in the listing) without breaking them.

The dependencies are ``async def`` although none of them awaits: FastAPI runs a plain
``def`` dependency in its thread pool, so each one cost every request a hop to a worker
thread and back to the event loop (three on a negotiation: the node, the contract client,
the operator check) for a few attribute reads; on busy cores each hop waits for the
scheduler twice (bench/PROFILE-negotiation.md, round 4). They must never block.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from qdspace.node.api.problems import ApiProblem, NotAuthenticated
from qdspace.node.context import NodeContext
from qdspace.node.runtime.contract_ports import OutboxDelivery, PeerContracts
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.util.json_depth import loads as bounded_json

_T = TypeVar("_T")
_bearer = HTTPBearer(auto_error=False)

#: the largest page a caller may ask for
MAX_PAGE = 10_000
NEXT_CURSOR_HEADER = "X-Next-Cursor"
#: the highest position a cursor can stand for (an offset or a row id: a 64-bit integer
#: in both databases; a forged one beyond it would reach the driver as an overflow). Half
#: the range, so that a route's offset plus a page and one more row stays inside it (a
#: forged cursor at 2**63 - 1 overflowed the ledger leaves' LIMIT: a 500)
MAX_POSITION = 2**62


class NoContracts(ApiProblem):
    """The node runs without contract machinery."""

    status = 503


class BadCursor(ApiProblem):
    """A cursor this node did not hand out (or no longer understands)."""

    status = 400


async def node_context(request: Request) -> NodeContext:
    """The node the app serves (``app.state.node``)."""
    ctx = request.app.state.node
    assert isinstance(ctx, NodeContext)
    return ctx


Ctx = Annotated[NodeContext, Depends(node_context)]


async def contract_runtime(ctx: Ctx) -> ContractRuntime:
    """The node's contract runtime; 503 on a node without contract machinery."""
    if ctx.contracts is None:
        raise NoContracts("this node runs no contract machinery")
    return ctx.contracts


Runtime = Annotated[ContractRuntime, Depends(contract_runtime)]


async def contract_client(ctx: Ctx) -> PeerContracts:
    """The node's one contract client (consumer side: negotiate, pull, subscribe)."""
    if ctx.contract_client is None:
        raise NoContracts("this node runs no contract machinery")
    return ctx.contract_client


async def outbox(ctx: Ctx) -> OutboxDelivery:
    """The node's outbox dispatcher (notices to peers: terminations, receipts)."""
    if ctx.outbox is None:
        raise NoContracts("this node runs no contract machinery")
    return ctx.outbox


Client = Annotated[PeerContracts, Depends(contract_client)]
Outbox = Annotated[OutboxDelivery, Depends(outbox)]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the node's operator (the one bearer token of its directory)."""

    role: str
    member_id: str


async def require_operator(
    ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The operator, or 401. `node.api.gate.BearerGate` has checked already; this keeps
    the check beside the route and in the OpenAPI schema (``bearer`` security), comparing
    bytes so no token can raise."""
    given = "" if creds is None else creds.credentials
    if not hmac.compare_digest(given.encode(), ctx.operator_token.encode()):
        raise NotAuthenticated("operator token required (Authorization: Bearer ...)")
    return Caller("operator", ctx.keys.identity.member_id)


Operator = Annotated[Caller, Depends(require_operator)]


@dataclass(frozen=True)
class PageRequest:
    """What page a caller asked for: at most ``limit`` items from ``offset``."""

    limit: int | None
    offset: int

    def take(self, items: Sequence[_T], response: Response) -> list[_T]:
        """This page of ``items``; the next page's cursor goes into ``response``."""
        end = len(items) if self.limit is None else self.offset + self.limit
        if end < len(items):
            response.headers[NEXT_CURSOR_HEADER] = encode_cursor(end)
        return list(items[self.offset : end])

    def read(self, read: Callable[[int | None, int], Sequence[_T]], response: Response) -> list[_T]:
        """This page, read by ``read(limit, offset)`` where the items are (one more than
        the page asked for: whether another follows); as `take` gives it of every item."""
        items = read(None if self.limit is None else self.limit + 1, self.offset)
        if self.limit is not None and len(items) > self.limit:
            response.headers[NEXT_CURSOR_HEADER] = encode_cursor(self.offset + self.limit)
            return list(items[: self.limit])
        return list(items)


def encode_cursor(offset: int) -> str:
    raw = json.dumps({"o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor stands for; `BadCursor` for anything this node did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = bounded_json(raw)["o"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise BadCursor("cursor: not a cursor this node handed out") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_POSITION:
        raise BadCursor("cursor: not a cursor this node handed out")
    return offset


async def paging(
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="page size")] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="the X-Next-Cursor of the last page")
    ] = None,
) -> PageRequest:
    return PageRequest(limit, 0 if cursor is None else decode_cursor(cursor))


Paging = Annotated[PageRequest, Depends(paging)]
