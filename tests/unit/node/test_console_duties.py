"""The contracts page's deletion duties: a node keeps one per agreement and order, so the
page shows the ones that need someone first (read so in SQL: `test_duty_listing`) and
says how many stand in each status; `qdspace contracts` says it the same way."""

from __future__ import annotations

import random

from qdspace.node.cli import contracts as cli
from qdspace.node.console.contract_pages import duty_summary
from qdspace.policies.retention import ATTENTION_ORDER, DutyStatus


def test_the_summary_counts_each_status_in_the_order_listed_alike_in_the_cli() -> None:
    rnd = random.Random(4)
    for _ in range(20):
        counts = {s: rnd.choice([0, 0, 1, 7, 120]) for s in DutyStatus}
        want = [f"{counts[s]} {s.value.replace('_', ' ')}" for s in ATTENTION_ORDER if counts[s]]
        assert duty_summary(counts) == ", ".join(want)
        # the API's counts, as `qdspace contracts` reads them
        public = {s.value: n for s, n in counts.items()} | {"total": sum(counts.values())}
        assert cli.duty_summary(public) == (duty_summary(counts) or "none")
    assert duty_summary({}) == ""
    assert tuple(s.value for s in ATTENTION_ORDER) == cli.DUTY_ATTENTION
