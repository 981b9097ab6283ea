"""What outlives a transfer process: a note that it was pruned, and the re-reads counted.

Why separate: the transfer processes themselves (`transfers`) are working state, pruned
by the retention sweep once nothing can be done with them any more (`transfer_prune`).
Two small records remain, each bounded:

- ``contract_transfer_gone``: one row per transfer pruned here (whose it was, when it
  ended, when it went), so that a consumer that asks for it again is told it is no
  longer held (`TransferGoneError`) instead of "not yours", and its id is not taken
  by a new transfer. Kept for `GONE_KEEP`, then pruned too (an id asked for after that
  reads as unknown).
- ``contract_transfer_act``: one row per re-read (and per charged resume or
  suspension) a member made (`transfer_acts`), counted within the quota window against
  the member's hourly transfer quota. They were counted in memory, so a restart (or a
  hosted tenant reloaded) gave a hostile member a fresh quota. A member's acts past the
  window are deleted with its next one; the sweep deletes the rest after `ACT_KEEP`.
- ``contract_transfer_prune``: when the sweep last pruned (`transfer_prune`): the
  sweep runs every half minute, the prune reads every finished transfer, so it runs
  once per `PRUNE_EVERY` and remembers when across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH
from qdspace.connector.negotiation import Role

#: how long the note of a pruned transfer is kept (then its id reads as unknown)
GONE_KEEP = timedelta(days=365)
#: how long a member's re-reads are kept at most: longer than any quota window (an hour;
#: `node.runtime.contracts_base.QUOTA_WINDOW`), which is all they are counted for
ACT_KEEP = timedelta(days=1)
#: how often the retention sweep prunes finished transfers (it runs far more often)
PRUNE_EVERY = timedelta(hours=1)

transfer_gone_table = Table(
    "contract_transfer_gone",
    CONTRACT_METADATA,
    Column("transfer_id", String(ID_LENGTH), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    Column("role", String(16), nullable=False),
    Column("consumer_id", String(ID_LENGTH), nullable=False),
    Column("state", String(16), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=False),
    Column("pruned_at", UTCDateTime(), nullable=False, index=True),
)
transfer_act_table = Table(
    "contract_transfer_act",
    CONTRACT_METADATA,
    Column("act_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("member_id", String(ID_LENGTH), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    # a member's acts within the window (`TransferActs.count`), and those past it
    Index("ix_contract_transfer_act_member", "member_id", "at"),
)
transfer_prune_table = Table(
    "contract_transfer_prune",
    CONTRACT_METADATA,
    Column("job", String(32), primary_key=True),
    Column("ran_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True)
class TransferGone:
    """The note of a pruned transfer."""

    transfer_id: str
    agreement_id: str
    role: Role
    consumer_id: str
    state: str
    ended_at: datetime
    pruned_at: datetime

    def error(self) -> TransferGoneError:
        """What one who asks for it is told (only its own party: see `ProviderTransfers`)."""
        return TransferGoneError(
            f"transfer {self.transfer_id} is no longer held here: it was {self.state} on "
            f"{self.ended_at:%Y-%m-%d} and its record was removed on {self.pruned_at:%Y-%m-%d} "
            "by the retention sweep, once it was of no more use; a new transfer under an "
            "agreement in force reads what may still be read",
            self,
        )


class TransferGoneError(UnknownContractError):
    """A transfer that was held here once and was pruned (`gone`, its note): not found,
    with why."""

    def __init__(self, message: str, gone: TransferGone) -> None:
        super().__init__(message)
        self.gone = gone
