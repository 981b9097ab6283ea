"""A DSP live stream (the HTTP data plane) opened before its consumer is revoked ends
once the provider sees the revocation, as a gRPC subscription does
(`test_hostile_member.test_revocation_ends_the_revoked_members_open_stream`): the
stream's periodic re-check looked at the data token and the agreement only, so the
revoked member kept receiving every row stored after its revocation, for as long as it
kept the connection open. A pull is cut short the same way: no batch leaves after the
revocation is seen. Real node processes, real mutual TLS."""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from qdspace.connector import dsp_transfer as wire
from qdspace.node.dsp.auth import issue_token
from qdspace.node.dsp.edr import DataTokens
from qdspace.node.identity.authority import Authority
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of, wait_for
from .test_dsp_transfer import negotiate

pytestmark = pytest.mark.integration

SUNARC_ORDER = "PO-2026-0042"  # an order of SunArc's in the sample data


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A network of its own per test: each revokes SunArc."""
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


def _sunarc_client(net: LocalNetwork) -> httpx.Client:
    """SunArc's certificate calling Cellex's DSP listener directly (a read timeout well
    past the stream's heartbeat interval)."""
    layout = net["sunarc"].layout
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    return httpx.Client(
        verify=context, base_url=runtime_of(net, "cellex")["dsp"], timeout=httpx.Timeout(60.0)
    )


def _row(tag: str, i: int) -> dict[str, Any]:
    return {
        "inspection_id": f"REV-{tag}-{i:03d}",
        "station": "EL-1",
        "inspected_at": datetime(2026, 12, 2, 6, 0, i, tzinfo=UTC).isoformat(),
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": SUNARC_ORDER,
        "batch_id": "CX-CB-260012",
    }


class _Reader:
    """Reads a streamed response's lines in a thread; `ended` is set when the body ends."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()

    def _read(self, response: httpx.Response) -> None:
        try:
            for line in response.iter_lines():
                self.lines.append(line)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ended.set()

    def holds(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


def _open_transfer(net: LocalNetwork, http: httpx.Client, dataset: str) -> tuple[str, str]:
    """SunArc's agreement on Cellex's `dataset` (over DSP) and a transfer under it opened
    by hand; (the provider's pid, a data-plane token for it)."""
    with net["sunarc"].client() as oem:
        agreement = negotiate(oem, runtime_of(net, "cellex")["dsp"], dataset)
    keys, cellex_keys = net["sunarc"].keys(), net["cellex"].keys()
    me, audience = keys.identity.member_id, cellex_keys.identity.member_id
    ask = wire.request_message(f"urn:uuid:{uuid.uuid4()}", agreement, "https://127.0.0.1:9")
    auth = {"authorization": f"Bearer {issue_token(keys.signing_key, me, audience)}"}
    ack = http.post("/transfers/request", json=ask, headers=auth)
    assert ack.status_code == 201, ack.text
    ppid = ack.json()["providerPid"]
    return ppid, DataTokens(cellex_keys.signing_key, 300).issue(ppid, me, 1)


def _revoke_sunarc(net: LocalNetwork, http: httpx.Client, ppid: str, token: str) -> None:
    """Revoke SunArc; return once Cellex refuses its fresh data requests (its revocation
    list reloaded)."""
    Authority.load(net.authority_dir).revoke("sunarc", "went rogue")
    data = {"authorization": f"Bearer {token}"}
    wait_for(
        "Cellex to refuse SunArc's fresh data requests",
        lambda: http.get(f"/data/{ppid}", headers=data).status_code == 401,
        timeout=60,
    )


def _log_says(net: LocalNetwork, *parts: str) -> bool:
    log = net["cellex"].log_path.read_text(errors="replace")
    return all(part in log for part in parts)


def test_revocation_ends_the_revoked_members_dsp_live_stream(net: LocalNetwork) -> None:
    ingest_sample(net, "cellex")
    tag = uuid.uuid4().hex[:8]
    with _sunarc_client(net) as http, net["cellex"].client() as supplier:
        ppid, token = _open_transfer(net, http, "live-inspections")

        def post(i: int) -> None:
            rows = {"rows": [_row(tag, i)]}
            assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1

        data = {"authorization": f"Bearer {token}"}
        response = http.send(http.build_request("GET", f"/data/{ppid}", headers=data), stream=True)
        try:
            assert response.status_code == 200, response.read()
            reader = _Reader(response)
            post(1)
            wait_for("the row stored before the revocation", lambda: reader.holds(f"REV-{tag}-001"))
            _revoke_sunarc(net, http, ppid, token)
            # the open stream ends (before the fix it went on, heartbeat after heartbeat,
            # and carried every row stored after the revocation)
            wait_for("the revoked member's open stream to end", reader.ended.is_set, timeout=60)
        finally:
            response.close()
    assert reader.error is None, reader.error
    wait_for(
        "the stream's end in Cellex's log",
        lambda: _log_says(net, "is revoked", f"DSP live {ppid} stopped"),
    )


PULL_ROWS = 30_000  # far more than the connection buffers while SunArc does not read


def test_revocation_cuts_the_revoked_members_pull_short(net: LocalNetwork) -> None:
    """SunArc reads the first batch of a large pull, then stops reading (the provider is
    held by flow control), is revoked, and reads on: the pull ends without its last
    batch (before the fix every batch left, the whole data set)."""
    ingest_sample(net, "cellex")
    tag = uuid.uuid4().hex[:8]
    with _sunarc_client(net) as http, net["cellex"].client() as supplier:
        for start in range(0, PULL_ROWS, 5000):
            rows = {"rows": [_row(tag, i % 60) | {"inspection_id": f"PULL-{tag}-{i:06d}"}
                             for i in range(start, start + 5000)]}  # fmt: skip
            assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 5000
        ppid, token = _open_transfer(net, http, "inspections")
        data = {"authorization": f"Bearer {token}"}
        request = http.build_request(
            "GET", f"/data/{ppid}", headers=data, params={"batch_rows": "100"}
        )
        response = http.send(request, stream=True)
        try:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            assert '"batch"' in next(lines)  # the first batch's header
            _revoke_sunarc(net, http, ppid, token)
            rest = list(lines)
        finally:
            response.close()
    headers = [line for line in rest if line.startswith('{"batch"')]
    assert not any('"last":true' in line for line in headers), len(headers)
    assert sum(f"PULL-{tag}-" in line for line in rest) < PULL_ROWS
    wait_for("the pull's end in Cellex's log", lambda: _log_says(net, f"DSP data {ppid} stopped"))
