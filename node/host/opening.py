"""Opening a host's tenants side by side at its start, and what stays one at a time.

Opened one after another, a tenant whose PostgreSQL server does not answer (a firewall
dropping packets, a server that takes the connection and never replies) held every
tenant after it for its connect timeout (``connector.storage.PG_CONNECT_S``, or longer
where its URL sets one), and a host of many tenants for the sum of theirs. So a few
threads open them at once (`OPEN_AT_ONCE`), and a tenant that waits, waits alone.

What must not run at once is a schema migration: Alembic keeps its migration context
and ``op`` in module globals, so two tenants migrating together could run one's steps on
the other's connection. A tenant whose database is at the newest revision (every start
but the first after an upgrade) migrates nothing and takes no lock; one that must
migrate takes the host's one lock, only once its database has answered
(`schema_guard`): a database that does not answer never holds the others' migrations up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from sqlalchemy.exc import OperationalError

from qdspace.connector.errors import StorageError
from qdspace.connector.storage import (
    create_store_engine,
    current_revision,
    head_revision,
    normalise_url,
    safe_url,
)

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


def schema_guard(url: str, migrating: threading.Lock) -> AbstractContextManager[object]:
    """What opening the database at ``url`` holds: nothing when its schema is at the
    newest revision, else ``migrating`` (the host's one migration lock; see the module).
    The look at its revision is the connect that may wait, holding no lock; a database
    that does not answer is a `StorageError` worded as ``open_store`` words it."""
    engine = create_store_engine(url)
    try:
        revision = current_revision(engine)
    except OperationalError as exc:
        raise StorageError(
            f"cannot open database {safe_url(normalise_url(url))}: {exc.orig}"
        ) from None
    finally:
        engine.dispose()
    return nullcontext() if revision == head_revision() else migrating
