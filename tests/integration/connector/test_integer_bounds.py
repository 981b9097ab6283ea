"""An integer a column cannot hold is the row's error, on SQLite as on PostgreSQL.

An order's quantity is an SQL INTEGER: 32 bits on PostgreSQL, which refused 2**31 with an
error that failed the whole ingest (a 503 for the caller, and no row of the upload was
stored), while SQLite took it. The validators now bound it on both backends, so the same
upload is good or bad alike: the row is rejected naming the maximum, its neighbours are
stored (the batch path for many rows, the row path for one).
"""

from __future__ import annotations

from typing import Any

import pytest

from qdspace.connector.field_parsers import INT_MAX
from qdspace.connector.storage import QualityStore


def _order(i: int, quantity: Any) -> dict[str, Any]:
    return {
        "order_id": f"ORD-{i}",
        "customer": "sunarc",
        "supplier": "cellex",
        "product": "cell",
        "quantity": quantity,
        "opened_at": "2026-12-01T08:00:00Z",
    }


@pytest.mark.parametrize("too_big", [INT_MAX + 1, 2**40, 10**30, str(2**40)])
def test_a_quantity_over_an_sql_integer_is_the_rows_error(
    store: QualityStore, too_big: Any
) -> None:
    rows = [_order(1, 5), _order(2, too_big), _order(3, INT_MAX)]
    report = store.ingest_rows("order", enumerate(rows, 1))
    assert report.accepted == 2
    (problem,) = report.rejected
    assert (problem.line, problem.field) == (2, "quantity"), problem
    assert f"above the maximum {INT_MAX}" in problem.reason, problem
    one = store.ingest_rows("order", [(7, _order(4, too_big))])  # alone: the row path
    assert one.accepted == 0 and one.rejected[0].field == "quantity"
