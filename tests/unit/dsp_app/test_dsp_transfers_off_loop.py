"""The DSP transfer routes look the process a pid names up (a database read) in a worker
thread, never on the event loop the node's gRPC calls share: a locked database held the
loop while a member asked for a transfer's state or sent a control message."""

from __future__ import annotations

import uuid

import pytest

from .conftest import DSP, Calls, Provider, with_transfers


def test_the_transfer_routes_look_their_process_up_off_the_event_loop(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which process a pid names is a database read: the transfer routes make it in a
    worker thread (a locked database held the loop the node's gRPC calls share)."""
    with_transfers(cellex)
    calls.watch(monkeypatch, cellex.runtime.store.dsp, "by_own_pid")
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    pid = f"urn:uuid:{uuid.uuid4()}"
    assert sunarc.get(f"/transfers/{pid}").status_code == 404
    message = {
        "@context": [DSP],
        "@type": "TransferSuspensionMessage",
        "providerPid": pid,
        "consumerPid": f"urn:uuid:{uuid.uuid4()}",
    }
    assert sunarc.post(f"/transfers/{pid}/suspension", message).status_code == 404
    assert calls.counts.get("by_own_pid", 0) >= 2
    assert calls.on_loop == []
