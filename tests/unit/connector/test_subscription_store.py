"""A consumer's live subscriptions as kept (`connector.contract_store.subscriptions`), on a
real SQLite file and PostgreSQL when QDSPACE_TEST_PG_URL is set."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from qdspace.connector.contract_store import (
    ContractStore,
    OutboxMessage,
    StoredSubscription,
    subscriptions,
)
from qdspace.connector.spc import QualityAlert, SpcAlert, SpcPoint, SpcSpec

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


def alert(n: int, rule: str = "WE1") -> QualityAlert:
    point = SpcPoint(n, 0.9, T0 + timedelta(seconds=n))
    spc = SpcAlert(rule, f"{rule}: point {n}", (point,), point.at)
    return QualityAlert(f"alert-{n:04d}", spc, "agr-1", "PO-1", "EL-1", "score")


def notice(n: int) -> OutboxMessage:
    return OutboxMessage("cellex", "notification", "sub-a", f"note-{n}", b"{}")


def test_raised_alerts_are_kept_once_with_their_notice_and_listed_newest_first(
    store: ContractStore,
) -> None:
    subs = store.subscriptions
    for n in range(5):
        at = T0 + timedelta(minutes=n)
        assert subs.record_alert("sub-a" if n % 2 == 0 else "sub-b", alert(n), at, [notice(n)])
    assert subs.record_alert("sub-a", alert(0), T0, [notice(99)]) == "repeat"
    assert store.outbox_backlog() == 5  # the repeat queued nothing
    assert [a.alert_id for a in subs.raised_alerts()] == [f"alert-{n:04d}" for n in range(5)]
    newest = subs.raised_alerts(limit=2, newest_first=True)
    assert [a.alert_id for a in newest] == ["alert-0004", "alert-0003"]
    assert [a.alert_id for a in subs.raised_alerts("sub-b")] == ["alert-0001", "alert-0003"]
    assert subs.raised_alerts()[2] == alert(2)  # read back whole: rule, points, where
    assert subs.count_raised_alerts() == 5 and subs.count_raised_alerts("sub-a") == 3


def test_a_subscription_keeps_a_bounded_number_of_alerts(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's values can be made to raise an alert a row; past the bound one is
    neither kept nor sent."""
    monkeypatch.setattr(subscriptions, "MAX_RAISED_PER_SUBSCRIPTION", 3)
    subs = store.subscriptions
    kept = [subs.record_alert("sub-a", alert(n), T0, [notice(n)]) for n in range(5)]
    assert kept == ["kept", "kept", "kept", "full", "full"]
    assert subs.record_alert("sub-b", alert(9), T0, [notice(9)]) == "kept"  # its own bound
    assert subs.count_raised_alerts("sub-a") == 3 and store.outbox_backlog() == 4
