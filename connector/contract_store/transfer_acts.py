"""A member's re-reads of transfers, counted in the database against its hourly quota.

Why: a re-read sends rows already sent again (as much work as a new transfer, but no
row is written for it) and a consumer's resumes and suspensions of one transfer are
messages it keeps, so the provider counts each against the member's
``transfers_per_member_hour`` (`node.runtime.contracts_transfer.charge_reread`). Those
counts lived in the node's memory: a restart, or a hosted tenant reloaded, forgot them,
and a member that knew when a node restarts got a fresh quota each time. Each act is a
row of ``contract_transfer_act`` now (`transfer_records`), read back within the window
like the transfers a member opened (`common.opened_by`).

Bound: a member's acts older than the window are deleted with its next act, and an act
over the quota is refused before it is written, so a member keeps at most its quota of
rows; the retention sweep deletes those of members that went quiet
(`transfer_prune`, after `transfer_records.ACT_KEEP`).

The check and the count are one step within this process (a lock), as they were in
memory: two re-reads of one member on two threads cannot both take the last one. Nodes
sharing a database (none do) could pass the quota by their calls in flight; within one
node the count of transfers opened is one step with the opening too
(`node.runtime.contracts_negotiation.ProviderNegotiation.opening`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select

from qdspace.connector import held_connection
from qdspace.connector.contract_store.common import TableStore
from qdspace.connector.contract_store.transfer_records import transfer_act_table


class TransferActs(TableStore):
    """The acts (re-reads, charged resumes and suspensions) of each member within
    `window` before now, kept in the contract database: a restart forgets none."""

    def __init__(self, engine: Engine, window: timedelta) -> None:
        super().__init__(engine)
        if window <= timedelta(0):
            raise ValueError("the window acts are counted in must be positive")
        self.window = window
        self._lock = threading.Lock()

    def count(self, member_id: str, now: datetime) -> int:
        """The acts of `member_id` within the window before `now`. Acts dated after `now`
        are not counted: they were made while the node's clock was moved forward (the
        demo moves it 180 days), and would count for months once it is set back."""
        table = transfer_act_table
        statement = select(func.count()).where(
            table.c.member_id == member_id,
            table.c.at > now - self.window,
            table.c.at <= now,
        )
        with held_connection.connect(self.engine) as connection:
            return int(connection.execute(statement).scalar_one())

    def add(self, member_id: str, now: datetime, check: Callable[[int], None]) -> None:
        """Count one more act of `member_id` at `now`, once ``check(acts so far)`` passes
        (it raises to refuse: nothing is written); the check and the count are one step.
        The member's acts past the window go in the transaction that writes it."""
        table = transfer_act_table
        with self._lock:
            check(self.count(member_id, now))
            with held_connection.begin(self.engine) as connection:
                connection.execute(
                    delete(table).where(
                        table.c.member_id == member_id, table.c.at <= now - self.window
                    )
                )
                connection.execute(insert(table).values(member_id=member_id, at=now))
