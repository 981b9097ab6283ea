"""A consumer's live subscriptions as kept (`connector.contract_store.subscriptions`), on a
real SQLite file and PostgreSQL when QDSPACE_TEST_PG_URL is set."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from qdspace.connector.contract_store import ContractStore, StoredSubscription
from qdspace.connector.spc import SpcSpec

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
SPEC = SpcSpec(usl=0.5, lsl=-0.25, baseline_size=20, cpk_window=20, cpk_threshold=1.5)


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, bytes(range(32)))


def kept(sid: str, minutes: int = 0, since: str | None = "41") -> StoredSubscription:
    return StoredSubscription(
        sid, "agr-1", "cellex", "spc-monitoring", "score", SPEC,
        T0 + timedelta(minutes=minutes), since=since,
    )  # fmt: skip


def test_a_subscription_is_kept_with_all_it_needs_to_resume(store: ContractStore) -> None:
    subs = store.subscriptions
    subs.add(kept("sub-b", minutes=1, since=None))
    subs.add(kept("sub-a"))
    subs.add(StoredSubscription("sub-a", "agr-X", "mallory", "x", "y", SpcSpec(), T0))  # repeat
    found = subs.find("sub-a")
    assert found == kept("sub-a")  # the first record stays; the spec reads back equal
    assert found is not None and found.active and found.created_at == T0
    assert [s.subscription_id for s in subs.active()] == ["sub-a", "sub-b"]  # oldest first
    assert subs.find("sub-b") is not None and subs.find("sub-b").since is None  # type: ignore[union-attr]
    assert subs.find("sub-none") is None


def test_a_baseline_is_kept_once(store: ContractStore) -> None:
    subs = store.subscriptions
    subs.add(kept("sub-a"))
    subs.set_baseline("sub-a", 0.12, 0.034)
    subs.set_baseline("sub-a", 9.0, 9.0)  # a later one changes nothing
    found = subs.find("sub-a")
    assert found is not None
    assert math.isclose(found.centre or 0, 0.12) and math.isclose(found.sigma or 0, 0.034)


def test_a_subscription_ends_once_with_its_first_reason(store: ContractStore) -> None:
    subs = store.subscriptions
    subs.add(kept("sub-a"))
    subs.add(kept("sub-b", minutes=1))
    assert subs.end("sub-a", T0 + timedelta(hours=1), "ended by the operator " + "x" * 2000)
    assert not subs.end("sub-a", T0 + timedelta(hours=2), "PERMISSION_DENIED: later")
    assert not subs.end("sub-none", T0, "nothing to end")
    ended = subs.find("sub-a")
    assert ended is not None and not ended.active
    assert ended.ended_at == T0 + timedelta(hours=1)
    assert ended.end_reason is not None and ended.end_reason.startswith("ended by the operator")
    assert len(ended.end_reason) == 1000  # kept bounded
    assert [s.subscription_id for s in subs.active()] == ["sub-b"]  # never resumed
