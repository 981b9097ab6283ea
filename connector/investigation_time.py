"""When a quality case's events may be dated: the two rules a receiver holds an event to.

Each event is dated by its author (``CaseEvent.at``), and a receiver holds the date to
two rules: no further ahead of its own clock than clocks drift
(`connector.peer_time.check_sent_at`, checked where the event arrives), or a case dated
9999 would head every "most recently updated" listing for good; and not before the
events it follows (`check_order`, checked in the transaction that stores it), or a
party could date its moves before the case existed. A late event is normal (an outbox
delivers what was written during an outage), so the past is bounded by the case's own
order only. A node dates its own moves at ``max(now, not_before)``, so a peer whose
clock runs a little ahead never makes it write a move the peer would refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from qdspace.connector.contract_errors import MessageOutOfTime
from qdspace.connector.investigation import CaseEvent, Step


def not_before(log: Iterable[CaseEvent], author_id: str, step: Step) -> datetime | None:
    """The earliest time `author_id`'s next `step` in the case of `log` may carry: that of
    the latest event it follows (None for an OPEN, which follows nothing).

    A move follows every event before it in the log but one kind: an ACTION-DONE does
    not follow the other party's ACTION-DONEs, since both mark their own actions done at
    the same time, each unseen by the other (the only moves that may cross), so the two
    logs hold them in different orders. Every other move needs what came before it: a
    RECEIVE the SEND, an ACKNOWLEDGE the RECEIVE, an ACTION-DONE the ACCEPT, a CLOSE
    every action done or the DECLINE."""
    crossing = step is Step.ACTION_DONE
    times = [
        e.at
        for e in log
        if not (crossing and e.step is Step.ACTION_DONE and e.author_id != author_id)
    ]
    return max(times, default=None)


def check_order(log: Iterable[CaseEvent], event: CaseEvent) -> None:
    """Refuse `event` dated before the latest event of `log` (the case as held here) it
    follows (`not_before`): `MessageOutOfTime`, INVALID_ARGUMENT, since the same event
    always gets the same answer."""
    floor = not_before(log, event.author_id, event.step)
    if floor is not None and event.at < floor:
        raise MessageOutOfTime(
            f"quality case event {event.event_id} ({event.step.value}) is dated "
            f"{event.at.isoformat()}, before the event it follows in case {event.case_id} "
            f"({floor.isoformat()}): a move is dated no earlier than what it answers"
        )
