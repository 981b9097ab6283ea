"""Revocation fails closed; the call caps and the finite-number check hold on their own."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.revocation import (
    RevocationList,
    RevocationListMissing,
    StaleRevocationList,
)
from qdspace.node.rpc.limits import (
    CallCaps,
    CallLimiter,
    LimitExceeded,
    NumberOutOfRange,
    check_numbers,
)
from qdspace.protocols.v1 import notification_pb2


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "test-space")


def test_no_revocation_list_means_no_start(authority: Authority, tmp_path: Path) -> None:
    with pytest.raises(RevocationListMissing, match="revocation list required"):
        RevocationList(authority.cert, None)
    with pytest.raises(RevocationListMissing, match="qdspace authority crl"):
        RevocationList(authority.cert, tmp_path / "nowhere.pem")


def test_a_stale_list_refuses_until_reissued(authority: Authority) -> None:
    path = authority.issue_crl(dt.timedelta(seconds=60))
    crl = RevocationList(authority.cert, path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    with pytest.raises(StaleRevocationList, match=r"expired.*qdspace authority crl"):
        crl.check_fresh(later)
    authority.issue_crl(dt.timedelta(days=7))
    os.utime(path, ns=(0, 1))  # a new file even within the same mtime tick
    crl.check_fresh(later)  # reloaded, fresh again


def test_an_older_list_does_not_replace_a_newer_one(authority: Authority) -> None:
    path = authority.directory / "crl.pem"
    older = path.read_bytes()
    crl = RevocationList(authority.cert, path)
    time.sleep(1.1)  # CRL times have whole seconds
    authority.issue_crl(dt.timedelta(days=30))
    crl.refresh()
    newer = crl.next_update
    path.write_bytes(older)  # somebody copies the old list back (a rollback)
    crl.refresh()
    assert crl.next_update == newer


def test_caps_per_member_and_in_all() -> None:
    limiter = CallLimiter(CallCaps(server_calls=3, per_peer_calls=2, per_peer_streams=1))
    a1 = limiter.acquire("a", "alice", stream=False)
    limiter.acquire("a", "alice", stream=False)
    with pytest.raises(LimitExceeded, match="member alice has 2 calls open"):
        limiter.acquire("a", "alice", stream=False)
    limiter.acquire("a", "alice", stream=True)
    with pytest.raises(LimitExceeded, match="serving 3 calls"):
        limiter.acquire("b", "bob", stream=False)
    a1()
    a1()  # releasing twice frees one slot only
    limiter.acquire("b", "bob", stream=False)
    with pytest.raises(LimitExceeded):
        limiter.acquire("c", "carol", stream=False)


def test_non_finite_numbers_anywhere_in_a_message_are_refused() -> None:
    good = notification_pb2.QualityAlert(points=[notification_pb2.AlertPoint(value=0.4)])
    check_numbers(notification_pb2.NotificationMessage(quality_alert=good))
    for bad in (float("nan"), float("inf"), -float("inf")):
        alert = notification_pb2.QualityAlert(
            points=[notification_pb2.AlertPoint(value=0.1), notification_pb2.AlertPoint(value=bad)]
        )
        with pytest.raises(NumberOutOfRange, match=r"quality_alert.points\[1\].value"):
            check_numbers(notification_pb2.NotificationMessage(quality_alert=alert))


def test_timestamps_must_be_dates() -> None:
    check_numbers(notification_pb2.NotificationMessage(sent_at_unix_us=1_764_655_200_000_000))
    for bad in (-1, 2**62):
        with pytest.raises(NumberOutOfRange, match="sent_at_unix_us"):
            check_numbers(notification_pb2.NotificationMessage(sent_at_unix_us=bad))
