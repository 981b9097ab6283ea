"""One member's openings one at a time: a quota's count and the opening it allows, as one step.

A provider takes at most ``negotiations_per_member_hour`` new negotiations and
``transfers_per_member_hour`` new transfers (and re-reads) from a member in any hour
(`node.runtime.contracts_base.over_quota`). The count is a read of the rows the member
opened, the opening an insert: two requests decided side by side both read the count
before either row is written, and both pass. Six requests of one member sent at once
to a provider with a quota of one opened three negotiations; a member's calls in flight
bounded the overrun, nothing else did.

So the count and the write that opens run under the member's lock (`MemberLocks.hold`):
one request of a member at a time is counted and opened, while other members' go on
side by side. The same lock makes a DSP request with a consumerPid that is already being
opened wait for that opening to end, and then see it (`node.dsp.app`). It is reentrant:
the DSP binding holds it around the binding of the pids and the runtime's move, which
takes it again.

One process: nodes do not share a database (the re-read counts' lock is the same,
`connector.contract_store.transfer_acts`); a unique key keeps two bindings of one peer
pid out of the database whatever opens them (`connector.contract_store.dsp`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: where `locks_of` keeps an owner's locks (one set per contract runtime)
_ATTRIBUTE = "_member_locks"


class MemberLocks:
    """A reentrant lock per member, kept only while someone holds or waits for it (a
    member that stops calling leaves nothing behind)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        #: member id -> (its lock, the threads holding or waiting for it)
        self._locks: dict[str, tuple[threading.RLock, int]] = {}

    @contextmanager
    def hold(self, member_id: str) -> Iterator[None]:
        """Hold `member_id`'s lock for the block (blocking: a worker thread's call)."""
        with self._guard:
            lock, users = self._locks.get(member_id, (None, 0))
            lock = lock or threading.RLock()
            self._locks[member_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                _, users = self._locks[member_id]
                if users == 1:
                    del self._locks[member_id]
                else:
                    self._locks[member_id] = (lock, users - 1)


def locks_of(owner: object) -> MemberLocks:
    """The member locks of `owner` (a contract runtime), made on first use: one set per
    runtime, so the tenants of a host share none."""
    found = owner.__dict__.get(_ATTRIBUTE)
    if found is None:  # setdefault: two threads asking first both get the one kept
        found = owner.__dict__.setdefault(_ATTRIBUTE, MemberLocks())
    assert isinstance(found, MemberLocks)
    return found
