"""One tenant of a running host, as the host holds it (`HostedTenant`), and the small
helpers every part of the host uses with it.

Why a module of its own: the runtime (`node.host.runtime`) opens, serves, suspends and
stops tenants; what one tenant *is* (its context, servers, listeners, token, quotas and
how the host operator sees it) is read by the dispatcher, the removal and the listeners
too, and kept here it no longer pushes the runtime past the size the house keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qdspace.node.host.registry import TenantRecord, TenantState
from qdspace.node.logs import MEMBER

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from qdspace.node.context import NodeContext
    from qdspace.node.host.admission import TenantAdmission
    from qdspace.node.host.refusal import RefusingServer
    from qdspace.node.runtime.ledger import NodeLedger
    from qdspace.node.serving import MemberServer


@contextmanager
def as_member(name: str) -> Iterator[None]:
    """Log lines (and the tasks started meanwhile, which inherit it) name the tenant."""
    token = MEMBER.set(name)
    try:
        yield
    finally:
        MEMBER.reset(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def suspension_message(name: str, reason: str = "") -> str:
    why = f": {reason}" if reason else ""
    return f"member {name} is suspended by its host{why}; try again later"


@dataclass
class HostedTenant:
    """One tenant in the running host."""

    record: TenantRecord
    ctx: NodeContext | None = None
    member: MemberServer | None = None
    app: ASGIApp | None = None
    ledger: NodeLedger | None = None
    refusing: RefusingServer | None = None
    #: the tenant's regulator listener (uvicorn) and its task, when it has a port
    regulator: Any = None
    regulator_task: asyncio.Task[None] | None = None
    regulator_port: int | None = None
    #: the tenant's DSP listener (uvicorn) and its task, when it has a DSP port and serves
    dsp: Any = None
    dsp_task: asyncio.Task[None] | None = None
    #: why the tenant is not serving (it failed to open or start); "" when fine
    error: str = ""
    token_digest: bytes = b""
    #: its operator token (compared in constant time: `HostRuntime.by_token`)
    token: str = field(default="", repr=False)
    #: its quotas at work (`admission`); None until it opened
    admission: TenantAdmission | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def suspended(self) -> bool:
        return self.record.state is TenantState.SUSPENDED

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "suspended" if self.suspended else "serving"

    def public(self) -> dict[str, Any]:
        """What the host operator sees: no tenant data, only how it is hosted."""
        port = self.member.port if self.member is not None else None
        return {
            "name": self.name,
            "member_id": self.record.member_id,
            "role": self.record.role,
            "status": self.status,
            "grpc_port": port if port is not None else self.record.grpc_port,
            "regulator_port": self.regulator_port or self.record.regulator_port,
            "dsp_port": self.record.dsp_port or None,
            "certificate_not_after": (
                self.ctx.keys.identity.not_after.isoformat() if self.ctx is not None else None
            ),
            "reason": self.record.reason,
            "error": self.error,
            "added_at": self.record.added_at,
            "changed_at": self.record.changed_at,
            "own_quota": self.record.quota is not None,
            **(self.admission.public() if self.admission is not None else {}),
        }

    async def close_transfers(self) -> None:
        """End the DSP transfers it receives (pulls, live streams) and close its DSP
        client (`DspTransfers.close`): with its listeners when it is suspended, stopped
        or closed. Its next DSP listener asks the providers again (`resume_after_restart`)."""
        if self.ctx is not None and self.ctx.dsp_transfers is not None:
            await self.ctx.dsp_transfers.close()
