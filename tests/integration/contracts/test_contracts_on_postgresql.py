"""The contract tests' heart once more with every member's database on PostgreSQL.

The storage suite proves the store on PostgreSQL; this proves the network on it: real
node processes, each with a schema of its own on the server of ``QDSPACE_TEST_PG_URL``,
negotiate, transfer, stream and sweep exactly as they do on SQLite. The tests are the
SQLite suite's own functions, imported here so that they run against this module's
`network` and `space` (a second, PostgreSQL-backed data space); they skip with the
how-to when no server is configured.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import Space, ingest_sample
from .test_contracts_lifecycle import (
    inspections_agreement,  # noqa: F401  (a fixture the imported tests use)
    test_negotiation_ends_agreed_with_both_signatures_on_both_sides,
    test_transfer_delivers_exactly_the_allowed_rows_and_fields,
)
from .test_contracts_retention import (
    test_closed_order_expires_is_swept_and_both_sides_hold_the_receipt,
)
from .test_contracts_stream import test_live_records_arrive_in_scope_and_an_spc_rule_fires

pytestmark = pytest.mark.integration

PG_ENV = "QDSPACE_TEST_PG_URL"
PG_HOWTO = (
    f"the contract network on PostgreSQL needs {PG_ENV}=postgresql+psycopg://USER:PASSWORD@"
    "HOST:PORT/DB (a database the user may create schemas in); .ci/run installs and starts one"
)

__all__ = [
    "test_closed_order_expires_is_swept_and_both_sides_hold_the_receipt",
    "test_live_records_arrive_in_scope_and_an_spc_rule_fires",
    "test_negotiation_ends_agreed_with_both_signatures_on_both_sides",
    "test_transfer_delivers_exactly_the_allowed_rows_and_fields",
]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """The reference members, each node's database a schema on the test PostgreSQL."""
    pg_url = os.environ.get(PG_ENV)
    if not pg_url:
        pytest.skip(PG_HOWTO)
    net = LocalNetwork(tmp_path_factory.mktemp("space-pg"), pg_url=pg_url)
    try:
        net.create()
        net.start()
        assert all(m.pg_url for m in net.members.values())
        yield net
    finally:
        net.stop()
        net.drop_databases()


@pytest.fixture(scope="module")
def space(network: LocalNetwork) -> Iterator[Space]:
    """This module's network with both suppliers' sample data ingested."""
    for name in ("cellex", "polycell"):
        ingest_sample(network, name)
    yield Space(network)
