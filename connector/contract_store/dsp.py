"""The Dataspace Protocol side of the processes run over the DSP binding.

Why separate: the state machines keep one id per process (the local one), while the
Dataspace Protocol gives each process two (``consumerPid``, ``providerPid``) and a
callback address where the other side's messages go. This aggregate maps one onto the
other, per process kind (``negotiation``, ``transfer``), and remembers which peer a
process belongs to, so a message for someone else's process is told "not found" (the
binding's 404), never anything about it.

Invariants: a local process has at most one DSP binding; our own pid is unique per
kind (it is what the peer addresses us with); the peer's pid and the callback are set
once, when known, and never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)

from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH, TableStore

dsp_table = Table(
    "dsp_process",
    CONTRACT_METADATA,
    Column("kind", String(16), nullable=False),
    Column("local_id", String(ID_LENGTH), nullable=False),
    Column("role", String(16), nullable=False),
    Column("peer_id", String(ID_LENGTH), nullable=False),
    Column("peer_pid", String(ID_LENGTH), nullable=True),
    Column("own_pid", String(ID_LENGTH), nullable=False),
    Column("callback", String(2048), nullable=False),
    Column("asked_json", LargeBinary, nullable=True),
    PrimaryKeyConstraint("kind", "local_id"),
    UniqueConstraint("kind", "own_pid", name="uq_dsp_process_own_pid"),
)


@dataclass(frozen=True)
class DspProcess:
    """One process's DSP binding (`role`: ours in it, ``provider`` or ``consumer``)."""

    kind: str
    local_id: str
    role: str
    peer_id: str
    own_pid: str
    callback: str
    peer_pid: str | None = None
    asked_json: bytes | None = None


def _process(row: Any) -> DspProcess:
    return DspProcess(
        row.kind,
        row.local_id,
        row.role,
        row.peer_id,
        row.own_pid,
        row.callback,
        row.peer_pid,
        None if row.asked_json is None else bytes(row.asked_json),
    )


class DspProcessStore(TableStore):
    """Bind, look up and complete the DSP side of negotiations and transfers."""

    def bind(self, process: DspProcess) -> None:
        with self.engine.begin() as connection:
            self.bind_in(connection, process)

    def bind_in(self, connection: Connection, process: DspProcess) -> None:
        """`bind` within the caller's transaction."""
        connection.execute(
            insert(dsp_table).values(
                kind=process.kind,
                local_id=process.local_id,
                role=process.role,
                peer_id=process.peer_id,
                peer_pid=process.peer_pid,
                own_pid=process.own_pid,
                callback=process.callback,
                asked_json=process.asked_json,
            )
        )

    def unbind(self, kind: str, local_id: str) -> None:
        """Remove the binding of a process that was never opened (its request refused
        after the pids were bound), so the peer's retry is decided afresh."""
        t = dsp_table
        with self.engine.begin() as connection:
            connection.execute(delete(t).where(t.c.kind == kind, t.c.local_id == local_id))

    def _one(self, *where: object) -> DspProcess | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(dsp_table).where(*where)).first()  # type: ignore[arg-type]
        return None if row is None else _process(row)

    def by_locals(self, kind: str, local_ids: Iterable[str]) -> dict[str, DspProcess]:
        """The bindings of those of `local_ids` that have one, by local id (one query
        per 500 ids)."""
        wanted = list(dict.fromkeys(local_ids))
        found: dict[str, DspProcess] = {}
        t = dsp_table
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = connection.execute(
                    select(t).where(t.c.kind == kind, t.c.local_id.in_(chunk))
                ).all()
                found.update((row.local_id, _process(row)) for row in rows)
        return found

    def by_own_pid(self, kind: str, pid: str) -> DspProcess | None:
        return self._one(dsp_table.c.kind == kind, dsp_table.c.own_pid == pid)

    def by_local(self, kind: str, local_id: str) -> DspProcess | None:
        return self._one(dsp_table.c.kind == kind, dsp_table.c.local_id == local_id)

    def by_peer_pid(self, kind: str, peer_id: str, pid: str) -> DspProcess | None:
        t = dsp_table
        return self._one(t.c.kind == kind, t.c.peer_id == peer_id, t.c.peer_pid == pid)

    def set_peer_pid(self, kind: str, local_id: str, peer_pid: str, callback: str = "") -> None:
        """Record the peer's pid (and callback, when it names one) once known."""
        t = dsp_table
        values: dict[str, str] = {"peer_pid": peer_pid}
        if callback:
            values["callback"] = callback
        with self.engine.begin() as connection:
            connection.execute(
                update(t)
                .where(t.c.kind == kind, t.c.local_id == local_id, t.c.peer_pid.is_(None))
                .values(**values)
            )
