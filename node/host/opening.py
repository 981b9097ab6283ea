"""Opening a host's tenants side by side at its start, and what stays one at a time.

Opened one after another, a tenant whose PostgreSQL server does not answer (a firewall
dropping packets, a server that takes the connection and never replies) held every
tenant after it for its connect timeout (``connector.storage.PG_CONNECT_S``, or longer
where its URL sets one), and a host of many tenants for the sum of theirs. So a few
threads open them at once (`OPEN_AT_ONCE`), and a tenant that waits, waits alone.

What must not run at once is a schema migration; ``connector.storage.migrate`` keeps
that to one at a time in the process, and only once a database has answered: a
database that does not answer never holds the others' migrations up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: tenants opened at once at a start (each may wait its database's connect timeout)
OPEN_AT_ONCE = 8


def open_side_by_side(opens: Sequence[Callable[[], None]]) -> list[Exception | None]:
    """Run each of ``opens`` (blocking), at most `OPEN_AT_ONCE` at a time; what each one
    raised (None: it opened), in their order. A `BaseException` that is not an
    `Exception` (an interrupt) is raised, once the others have ended."""
    if not opens:
        return []
    with ThreadPoolExecutor(min(OPEN_AT_ONCE, len(opens)), "host-open") as pool:
        futures = [pool.submit(one) for one in opens]
        failures = [future.exception() for future in futures]
    out: list[Exception | None] = []
    for failure in failures:
        if failure is not None and not isinstance(failure, Exception):
            raise failure
        out.append(failure)
    return out
