"""A peer's clock, as far as the node believes it.

Every protocol message carries its sender's time (``at``). The node keeps it as the
message's own statement (it is part of what a retry must repeat), but a peer's clock
decides nothing the node stores or signs:

- the hourly quotas count the processes a peer opened by when they were opened, and a
  request dated 1970 (the protobuf default, a field left unset) was counted in no hour
  at all, so a member opened as many negotiations and transfers as it liked. A transfer
  a peer opens is stamped with our clock (`received_at`); a negotiation keeps the
  request's time (it is the agreement's ``requestedAt``, which both sides check), so a
  request that opens one must be dated now, give or take the drift (`check_fresh`): it
  is sent as it is made, never from an outbox;
- a message dated ahead of our clock by more than clocks drift is refused
  (`check_sent_at`): the provider dates what it signs at ``max(now, last message)``, so a
  request and an acceptance dated 9999 made it sign, and anchor, an agreement of 9999.

A message dated in the past is normal: an outbox delivers it when the peer is back,
hours or days after it was written. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from qdspace.connector.contract_errors import MessageOutOfTime

#: how far ahead of our clock a peer's may run (NTP keeps honest ones within seconds)
MAX_CLOCK_SKEW = timedelta(minutes=5)


def check_fresh(at: datetime, now: datetime, what: str) -> None:
    """Refuse `what` dated more than `MAX_CLOCK_SKEW` from `now`, either way."""
    check_sent_at(at, now, what)
    if now - at > MAX_CLOCK_SKEW:
        behind = (now - at).total_seconds()
        raise MessageOutOfTime(
            f"{what} is dated {at.isoformat()}, {behind:.0f} s behind this node's clock; a "
            f"request that opens a negotiation is sent as it is made (at most "
            f"{MAX_CLOCK_SKEW.total_seconds():.0f} s)"
        )


def check_sent_at(at: datetime, now: datetime, what: str) -> None:
    """Refuse `what` dated more than `MAX_CLOCK_SKEW` ahead of `now`."""
    if at - now > MAX_CLOCK_SKEW:
        ahead = (at - now).total_seconds()
        raise MessageOutOfTime(
            f"{what} is dated {at.isoformat()}, {ahead:.0f} s ahead of this node's clock "
            f"(at most {MAX_CLOCK_SKEW.total_seconds():.0f} s)"
        )
