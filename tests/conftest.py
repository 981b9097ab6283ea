"""What every folder of the suite shares: the two databases, and how two workers split it.

The two databases every store's unit tests run on: a SQLite file, and PostgreSQL.

Each store is tested on both backends (CONVENTIONS 5). On PostgreSQL a test gets a schema
of its own on the server ``QDSPACE_TEST_PG_URL`` names, dropped when the test ends, so
tests neither see each other's rows nor leave any behind; without the variable those
tests are skipped. The contract store's (``tests/unit/connector/conftest.py``), the QDM
views' and the ledger's leaf queue's tests each wrote that set-up themselves, in two
folders; it lives here once, where every folder's fixtures can ask for it.

Some tests need the schema as a database URL, not an engine: the storage suite opens its
store from a URL (``tests/integration/connector/conftest.py``), a hosted tenant is given
one on its command line (``tests/integration/host/test_host_postgresql.py``). They and
``postgres_schema`` share one way to make and drop a schema, `fresh_pg_schema`, handed out
by the fixture of that name (a session fixture, so module-scoped fixtures can use it too).

``make test`` runs the suite on two pytest-xdist workers (``-n 2``, scheduled by
``pytest_xdist_make_scheduler`` below): run one after another, the tests kept one core of
two busy (0.54 of the machine's CPU time over 28 minutes, measured), as most of them wait
on node processes they start. Each test file goes to one worker whole, so its module
fixtures (a network of nodes, a chain, the demo) are set up once; a folder whose tests
share something of the machine goes to one worker whole too: the inspection tier's local
Ray (``integration/inference``). Each quick bench is a group of its own, as they share
nothing. Groups that run for minutes (files marked ``slow``) are handed out first, then
the other integration files, then the unit tests, so no long group starts last while the
other worker idles (``--no-loadscope-reorder`` keeps this order; xdist's own puts the
groups with the most tests first).

The two workers each start local data spaces, whose ports are drawn before the nodes bind
them: a port one worker drew a moment ago could be drawn by the other too, and one node
then failed with "Address already in use" (two of four fresh-clone runs). Each worker
draws from its own part of the port range (``pytest_configure``, `split_range`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

PG_URL = os.environ.get("QDSPACE_TEST_PG_URL")

#: folders whose tests go to one worker together, and why (see the module docstring)
SHARED_FOLDERS = {"tests/integration/inference": "the inspection tier's local Ray"}
#: files whose tests share no fixture: each test is a group of its own
SPLIT_FILES = {"tests/integration/test_bench_quick.py"}


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker: this worker's own part of the port range (module docstring)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit():
        from qdspace.util.ports import RANGE_VARIABLE, split_range

        os.environ[RANGE_VARIABLE] = split_range(int(worker[2:]), int(count))


def _group(nodeid: str) -> str:
    """The group a test belongs to, from its node id (all the scheduler sees)."""
    path = nodeid.split("::", 1)[0]
    for folder in SHARED_FOLDERS:
        if path.startswith(folder + "/"):
            return folder
    return nodeid if path in SPLIT_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scheduler by scope, with our groups as the scopes (xdist 3.8's own
    ``loadgroup`` marks do nothing on pytest 9: it renames the node ids in a way pytest 9
    no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On an xdist worker: groups with a slow test first, then integration, then unit."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank: dict[str, int] = {}
    for item in items:
        kind = 0 if item.get_closest_marker("slow") else 1 if "integration" in item.keywords else 2
        group = _group(item.nodeid)
        rank[group] = min(rank.get(group, kind), kind)
    items.sort(key=lambda item: rank[_group(item.nodeid)])


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(PG_URL is None, reason="QDSPACE_TEST_PG_URL not set"),
            ],
        ),
    ]
)
def db_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: a fixture that asks for this runs once on each; the
    PostgreSQL run is marked ``postgres`` and skipped when no test server is named."""
    return str(request.param)


@contextmanager
def _fresh_pg_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """A new schema of the test server, named ``PREFIX_`` and 8 random hex digits, and a
    URL whose connections use it (``options=-csearch_path=...``): ``(url, schema)``. The
    schema is dropped, with all it holds, when the block ends."""
    from qdspace.connector.storage import normalise_url

    assert PG_URL is not None
    base = normalise_url(PG_URL)
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in base else "?"
        try:
            yield f"{base}{separator}options=-csearch_path%3D{schema}", schema
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def fresh_pg_schema() -> Callable[[str], AbstractContextManager[tuple[str, str]]]:
    """``fresh_pg_schema(prefix)``: a context manager giving ``(url, schema)``, a new
    schema of the test server dropped when the block ends. Needs ``QDSPACE_TEST_PG_URL``
    (the caller skips without it)."""
    return _fresh_pg_schema


@pytest.fixture
def postgres_schema() -> Iterator[Callable[[str], Engine]]:
    """Makes an engine on a new schema of the test server (`fresh_pg_schema`); at the end
    of the test each engine is closed and its schema dropped."""
    with ExitStack() as made:

        def make(prefix: str) -> Engine:
            url, _ = made.enter_context(_fresh_pg_schema(prefix))
            engine = create_engine(url)
            made.callback(engine.dispose)
            return engine

        yield make


@pytest.fixture(scope="module")
def pg_networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``pg_networks(members, env=None, chain=False)``: real node processes whose
    databases are each a schema of the test PostgreSQL server (with an embedded chain
    when asked), started, for the module; stopped and their schemas dropped at its end.
    Skips the module without ``QDSPACE_TEST_PG_URL``."""
    from qdspace.node.localnet.network import LocalNetwork, MemberSpec

    made: list[LocalNetwork] = []

    def make(
        members: list[MemberSpec], env: dict[str, str] | None = None, chain: bool = False
    ) -> LocalNetwork:
        if not PG_URL:
            pytest.skip("needs QDSPACE_TEST_PG_URL (a PostgreSQL server; .ci/run starts one)")
        net = LocalNetwork(
            tmp_path_factory.mktemp("pg-net"), members, chain=chain, pg_url=PG_URL, env=env
        )
        made.append(net)
        net.create()
        net.start()
        assert all(m.pg_url for m in net.members.values())
        return net

    try:
        yield make
    finally:
        for net in made:
            try:
                net.stop()
            finally:
                net.drop_databases()
