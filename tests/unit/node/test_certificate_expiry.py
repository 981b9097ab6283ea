"""A member certificate's end is exported (a metric to alert on) and warned about within
30 days of it, at every start (`node.serving.note_certificate`), on real member keys."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import create_member_keys
from qdspace.node.metrics import NodeMetrics
from qdspace.node.serving import note_certificate


def _ctx(tmp_path: Path) -> Any:
    authority = Authority.init(tmp_path / "authority", "expiry-space")
    keys = create_member_keys(tmp_path / "cellex", authority, name="cellex", role="supplier")
    return SimpleNamespace(keys=keys, metrics=NodeMetrics())


def _gauge(ctx: Any) -> float:
    value = ctx.metrics.registry.get_sample_value(
        "qdspace_member_certificate_expiry_timestamp_seconds"
    )
    assert value is not None
    return float(value)


def test_the_end_is_exported_and_warned_about_within_30_days(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _ctx(tmp_path)
    end = ctx.keys.identity.not_after
    assert note_certificate(ctx, now=end - dt.timedelta(days=200)) is None  # far off: quiet
    assert _gauge(ctx) == end.timestamp()
    with caplog.at_level(logging.WARNING, logger="node"):
        soon = note_certificate(ctx, now=end - dt.timedelta(days=12, hours=1))
    assert soon is not None and "cellex ends in 12 days" in soon and "node renew" in soon
    assert soon in caplog.text
    gone = note_certificate(ctx, now=end + dt.timedelta(seconds=1))
    # an expired member no longer renews: the way back is a new code
    assert gone is not None and "has ended" in gone and "can no longer be renewed" in gone
    assert "authority revoke" in gone and "authority enroll" in gone and "node renew" not in gone
