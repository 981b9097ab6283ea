"""A host opens its tenants side by side: a tenant whose PostgreSQL server takes the
connection and never answers waits alone, while the tenants after it open. A real host
directory (three tenants enrolled with a real authority), opened by the host's runtime;
the silent server is a loopback socket that accepts and says nothing. Nothing is timed:
the test holds the silent server until the others have opened (opened one after
another, they never do), then lets its tenant fail.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.host.config import HostSettings
from qdspace.node.host.runtime import HostRuntime
from qdspace.node.host.tenants import Enrollment, add_tenant, init_host, load_master_key
from qdspace.node.identity.authority import Authority

from .conftest import eventually

pytestmark = pytest.mark.integration

#: first in the registry's order (by name): opened one after another, it held the rest
DARK = "aaa-dark"
OTHERS = ("bbb", "ccc")
PASSWORD = "not-shown-anywhere"


class SilentServer:
    """A loopback listener that accepts connections and never answers (a PostgreSQL
    server gone silent, a firewall that drops the replies)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(connection)

    def close(self) -> None:
        """Refuse new connections, and end the held ones: its clients fail at once."""
        with contextlib.suppress(OSError):  # not connected: nothing to shut down
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(10)
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_a_tenant_whose_database_never_answers_does_not_hold_the_others(
    tmp_path: Path, silent: SilentServer
) -> None:
    Authority.init(tmp_path / "authority", "test-space")
    files = init_host(tmp_path / "H", HostSettings())
    enrollment = Enrollment(authority_dir=tmp_path / "authority")
    # libpq's own bound far beyond the test's: only the test ends the wait
    url = f"postgresql://qd:{PASSWORD}@127.0.0.1:{silent.port}/qd?connect_timeout=300"
    add_tenant(files.directory, DARK, "supplier", enrollment, db_url=url)
    for name in OTHERS:
        add_tenant(files.directory, name, "supplier", enrollment)
    runtime = HostRuntime(
        files.directory, HostSettings.load(files.directory), load_master_key(files)
    )
    opening = threading.Thread(target=runtime.open_all, daemon=True)
    opening.start()
    try:
        eventually(lambda: silent.accepted, f"{DARK} to connect to its silent database")

        def others_opened() -> bool:
            tenants = [runtime.tenants.get(name) for name in OTHERS]
            return all(t is not None and t.admission is not None for t in tenants)

        eventually(others_opened, f"the others to open while {DARK}'s database is silent")
        dark = runtime.tenants[DARK]
        assert dark.ctx is None and not dark.error, dark  # still waiting on its database
        assert opening.is_alive()
    finally:
        silent.close()  # its tenant fails now
        opening.join(60)
    try:
        assert not opening.is_alive()
        assert list(runtime.tenants) == [DARK, *OTHERS]  # the registry's order
        statuses = {name: t.status for name, t in runtime.tenants.items()}
        assert statuses == {DARK: "failed", "bbb": "serving", "ccc": "serving"}, statuses
        error = runtime.tenants[DARK].error
        assert error.startswith("StorageError: cannot open database"), error
        assert PASSWORD not in error
    finally:
        runtime.close_all()


def test_tenants_that_all_migrate_at_once_each_open(tmp_path: Path) -> None:
    """A tenant's first opening (or the first after an upgrade) migrates its schema, and
    Alembic runs one migration per process at a time: eight tenants that all migrate,
    opened side by side, each open (without the lock in `connector.storage.migrate`
    they failed on each other's Alembic context: KeyError 'script' or 'config')."""
    Authority.init(tmp_path / "authority", "test-space")
    files = init_host(tmp_path / "H", HostSettings())
    enrollment = Enrollment(authority_dir=tmp_path / "authority")
    names = [f"t{i}" for i in range(8)]
    for name in names:
        add_tenant(files.directory, name, "supplier", enrollment)
    runtime = HostRuntime(
        files.directory, HostSettings.load(files.directory), load_master_key(files)
    )
    try:
        runtime.open_all()
        failed = {n: t.error for n, t in runtime.tenants.items() if t.error}
        assert not failed, failed
        assert list(runtime.tenants) == names
    finally:
        runtime.close_all()
