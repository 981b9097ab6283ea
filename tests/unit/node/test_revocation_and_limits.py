"""Revocation fails closed; the call caps and the finite-number check hold on their own."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from qdspace.node.errors import NulInString
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
    check_values,
)
from qdspace.protocols.v1 import notification_pb2, subscription_pb2, trace_pb2


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
    check_values(notification_pb2.NotificationMessage(quality_alert=good))
    for bad in (float("nan"), float("inf"), -float("inf")):
        alert = notification_pb2.QualityAlert(
            points=[notification_pb2.AlertPoint(value=0.1), notification_pb2.AlertPoint(value=bad)]
        )
        with pytest.raises(NumberOutOfRange, match=r"quality_alert.points\[1\].value"):
            check_values(notification_pb2.NotificationMessage(quality_alert=alert))


def test_timestamps_must_be_dates() -> None:
    check_values(notification_pb2.NotificationMessage(sent_at_unix_us=1_764_655_200_000_000))
    for bad in (-1, 2**62):
        with pytest.raises(NumberOutOfRange, match="sent_at_unix_us"):
            check_values(notification_pb2.NotificationMessage(sent_at_unix_us=bad))


def test_a_nul_in_any_string_of_a_message_is_refused() -> None:
    """No id, name or text of the protocol holds a NUL, and PostgreSQL refuses one in
    any string: a NUL anywhere (a field, a repeated field, a nested message) is refused
    before the message reaches a servicer, naming the field."""
    check_values(trace_pb2.InvestigateRequest(agreement_id="agr-1", batch_ids=["B-1"]))
    for message, where in (
        (subscription_pb2.SubscribeRequest(agreement_id="agr\x00"), r"^field agreement_id "),
        (trace_pb2.InvestigateRequest(batch_ids=["B-1", "\x00"]), r"^field batch_ids "),
        (
            notification_pb2.NotificationMessage(
                quality_alert=notification_pb2.QualityAlert(rule="RULE_1\x00")
            ),
            r"^field quality_alert\.rule ",
        ),
    ):
        with pytest.raises(NulInString, match=where):
            check_values(message)


def test_a_nul_in_a_map_key_is_refused() -> None:
    from qdspace.protocols.v1 import federation_pb2

    field = next(
        f
        for f in federation_pb2.UnmaskResponse.DESCRIPTOR.fields
        if f.message_type is not None and f.message_type.GetOptions().map_entry
    )
    good = federation_pb2.UnmaskResponse()
    getattr(good, field.name)["sunarc"].CopyFrom(getattr(good, field.name)["sunarc"])
    check_values(good)
    bad = federation_pb2.UnmaskResponse()
    getattr(bad, field.name)["sun\x00arc"].CopyFrom(getattr(bad, field.name)["x"])
    with pytest.raises(NulInString, match=f"field {field.name} \\(a key\\)"):
        check_values(bad)
