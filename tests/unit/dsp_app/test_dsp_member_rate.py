"""A member flooding the DSP listener with cheap requests is held to its request rate
(`node.dsp.caps`, the bucket its gRPC calls take from too) while another member calling
at the same time is served. Over it, a request is answered 429 with Retry-After and a
DSP error naming the settings, before its token is checked or its body read (as a member
over its hourly quota of negotiations is refused); a body read to its end keeps the
connection. The limiter's clock is the test's, held still: no token comes back while the
test runs, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pytest
from pyld import jsonld

from qdspace.node.dsp.caps import DRAIN_BYTES, RATE_DRAIN_BYTES, DspCallCaps
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.limits import CallCaps, CallLimiter, RateExceeded

from .conftest import Caller, Calls, Provider, with_transfers

BURST = 10
NOT_JSON = b'{"@type": "ContractRequestMessage", "consumerPid": '  # cut off


def limited(cellex: Provider, now: list[float], metrics: NodeMetrics | None = None) -> CallLimiter:
    """Cellex's app behind the caps, `BURST` requests a member on the clock `now`."""
    limiter = CallLimiter(CallCaps(per_peer_rate=1.0, per_peer_burst=BURST), clock=lambda: now[0])
    cellex.app = DspCallCaps(cellex.app, limiter, metrics)
    return limiter


def raw_post(caller: Caller, path: str, content: bytes, **headers: str) -> httpx.Response:
    headers = {**caller.headers(), "content-type": "application/json", **headers}
    answer: httpx.Response = caller.provider.loop.run(
        caller.http.post(path, content=content, headers=headers)
    )
    return answer


def test_a_flooding_member_is_refused_while_another_is_served(
    cellex: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node.dsp")
    metrics = NodeMetrics()
    limited(cellex, [1000.0], metrics)
    mallory = cellex.client(cellex.authority.member("mallory", "oem", b"m"))
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))

    async def both() -> tuple[list[Any], list[Any]]:
        def dataset(caller: Caller) -> Any:
            return caller.http.get("/catalog/datasets/inspections", headers=caller.headers())

        flood = asyncio.gather(*(dataset(mallory) for _ in range(BURST + 90)))
        served = asyncio.gather(*(dataset(sunarc) for _ in range(5)))
        return list(await flood), list(await served)

    flood, served = cellex.loop.run(both())
    assert [r.status_code for r in served] == [200] * 5  # at the same time as the flood
    codes = [r.status_code for r in flood]
    assert codes.count(200) == BURST and codes.count(429) == 90, codes
    counted = metrics.registry.get_sample_value(
        "qdspace_dsp_requests_refused_total", {"limit": "rate"}
    )
    assert counted == 90  # on /metrics
    refused = next(r for r in flood if r.status_code == 429)
    body = refused.json()
    assert body["@type"] == "CatalogError" and body["code"] == "429"
    assert body["reason"] == [
        "member mallory is over its request rate on this node (rpc_rate_per_peer 1 a "
        f"second, rpc_burst_per_peer {BURST}); retry in 1 s"
    ]
    assert refused.headers["retry-after"] == "1"
    assert "connection" not in refused.headers  # nothing left unread: the connection stays
    lines = [r.getMessage() for r in caplog.records if "over its request rate" in r.getMessage()]
    assert len(lines) == 1, lines  # one line for the whole flood


def test_over_its_rate_a_request_is_refused_before_its_token_or_body_is_read(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_transfers(cellex)
    now = [1000.0]
    limiter = limited(cellex, now)
    mallory = cellex.client(cellex.authority.member("mallory", "oem", b"m"))
    polycell = cellex.client(cellex.authority.member("polycell", "oem", b"c"))
    under = raw_post(polycell, "/negotiations/request", NOT_JSON)
    assert under.status_code == 400, under.text  # under its rate: the body is read

    # its gRPC calls take from the same bucket (`node.rpc.auth` paces each call)
    for _ in range(BURST):
        limiter.pace(mallory.member.identity.member_id, "mallory")
    with pytest.raises(RateExceeded):
        limiter.pace(mallory.member.identity.member_id, "mallory")

    calls.watch(monkeypatch, jsonld, "expand")
    for path, kind in (
        ("/negotiations/request", "ContractNegotiationError"),
        (f"/negotiations/urn:uuid:{uuid.uuid4()}/events", "ContractNegotiationError"),
        ("/transfers/request", "TransferError"),
        ("/catalog/request", "CatalogError"),
    ):
        answer = raw_post(mallory, path, NOT_JSON)
        assert answer.status_code == 429, (path, answer.text)  # not 400 (the body) or 404
        assert answer.json()["@type"] == kind
        assert "rpc_rate_per_peer" in answer.json()["reason"][0]
        assert answer.headers["retry-after"] == "1"
    no_token = mallory.provider.loop.run(mallory.http.get("/negotiations/x"))
    assert no_token.status_code == 429, no_token.text  # not 401: the token is never checked
    assert calls.counts == {}  # pyld never ran

    # a body too large to drain goes with the connection, as the other refusals' do; over
    # the rate that is one of more than 64 KiB (a flood of 1 MiB bodies is not read)
    big = raw_post(mallory, "/catalog/request", b"x", **{"content-length": str(DRAIN_BYTES + 1)})
    assert big.status_code == 429 and big.headers.get("connection") == "close"
    larger = raw_post(mallory, "/catalog/request", b"x" * (RATE_DRAIN_BYTES + 1))
    assert larger.status_code == 429 and larger.headers.get("connection") == "close"
    small = raw_post(mallory, "/catalog/request", b"x" * RATE_DRAIN_BYTES)
    assert small.status_code == 429 and "connection" not in small.headers  # read: kept

    now[0] += 1.0  # the Retry-After later, a token is back
    assert mallory.catalog().status_code == 200
    assert mallory.catalog().status_code == 429
