"""The Dataspace Protocol side of the processes run over the DSP binding.

Why separate: the state machines keep one id per process (the local one), while the
Dataspace Protocol gives each process two (``consumerPid``, ``providerPid``) and a
callback address where the other side's messages go. This aggregate maps one onto the
other, per process kind (``negotiation``, ``transfer``), and remembers which peer a
process belongs to, so a message for someone else's process is told "not found" (the
binding's 404), never anything about it.

Invariants: a local process has at most one DSP binding; our own pid is unique per
kind (it is what the peer addresses us with); the peer's pid and the callback are set
once, when known, and never changed; a peer's pid names at most one process of a kind
with that peer (a unique key, ``uq_dsp_process_peer_pid``, migration
``0030_dsp_peer_pid``). Without that key, four ContractRequestMessages of one
consumerPid sent at once each found no process of it and each opened one: four
negotiations, four providerPids, and a retry then answered by whichever row the
database returned first. Now the second binding of a pid is refused by the database,
whatever wrote it, and `DspProcessStore.bind` hands back the binding it met (the
retry it is).
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
from sqlalchemy.exc import IntegrityError

from qdspace.connector.contract_errors import MessageReplayError
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
    # (NULLs are distinct: the bindings whose peer's pid is not known yet never meet)
    UniqueConstraint("kind", "peer_id", "peer_pid", name="uq_dsp_process_peer_pid"),
)


class PeerPidTaken(MessageReplayError):
    """A peer named as its pid of one process the pid it has for another of its
    processes with us (a pid names one process, `uq_dsp_process_peer_pid`): nothing
    was changed."""


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

    def bind(self, process: DspProcess) -> DspProcess | None:
        """Bind `process`: None once bound, or the binding its peer's pid has already
        (a retry of the peer's that was bound meanwhile, by another thread or another
        process on this database): then nothing is written."""
        try:
            with self.engine.begin() as connection:
                self.bind_in(connection, process)
        except IntegrityError:
            met = None
            if process.peer_pid is not None:
                met = self.by_peer_pid(process.kind, process.peer_id, process.peer_pid)
            if met is None:  # another key (our own pid, the local id): not a retry
                raise
            return met
        return None

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
        """Record the peer's pid (and callback, when it names one) once known; a pid
        the peer has for another process with us already is `PeerPidTaken`."""
        t = dsp_table
        values: dict[str, str] = {"peer_pid": peer_pid}
        if callback:
            values["callback"] = callback
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    update(t)
                    .where(t.c.kind == kind, t.c.local_id == local_id, t.c.peer_pid.is_(None))
                    .values(**values)
                )
        except IntegrityError:
            raise PeerPidTaken(
                f"{kind} {local_id[:128]}: the peer's pid {peer_pid[:128]!r} names another "
                f"{kind} of it here already"
            ) from None
