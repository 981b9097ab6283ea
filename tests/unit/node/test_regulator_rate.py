"""A regulator's requests are held to the node's member rate, as a member's gRPC and DSP
requests are: a proof or a passport's verification reads the chain, and nothing bounded
how often one regulator could ask. Over its bucket: 429 with Retry-After, before the
request is read; another regulator is served meanwhile.

The regulator listener's real app (`create_regulator_app`) over a real node directory,
with a limiter of `BURST` requests a caller on a clock the test holds still (no token
comes back while it runs); credentials issued by real regulator keys of the same space.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from qdspace.node.api.regulator_app import create_regulator_app
from qdspace.node.identity.credential import issue_credential
from qdspace.node.identity.member import load_member_keys
from qdspace.node.init import init_node
from qdspace.node.rpc.limits import CallCaps, CallLimiter

from .conftest import cellex_context

BURST = 5


def test_a_regulator_over_its_rate_is_refused_and_another_is_served(tmp_path: Path) -> None:
    ctx = cellex_context(tmp_path)
    try:
        ctx.calls = CallLimiter(CallCaps(per_peer_rate=1.0, per_peer_burst=BURST), lambda: 0.0)
        tokens = {}
        for name in ("bafa", "tuv"):
            init_node(tmp_path / name, tmp_path / "authority", name=name, role="regulator")
            keys = load_member_keys(tmp_path / name)
            tokens[name] = issue_credential(keys, ctx.keys.identity.member_id)
        app = create_regulator_app(ctx)
        path = "/v1/regulator/proofs/inspection/no-such-record"

        async def asks(calls: list[str]) -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://node") as client:
                return [
                    await client.get(path, headers={"Authorization": f"Bearer {tokens[name]}"})
                    for name in calls
                ]

        answers = asyncio.run(asks(["bafa"] * (BURST + 3) + ["tuv"]))
        codes = [a.status_code for a in answers]
        served, over, other = codes[:BURST], codes[BURST:-1], codes[-1]
        # served: what the route says (503: this node anchors to no chain), not a refusal
        assert set(served) == {503}, codes
        assert over == [429, 429, 429], codes
        for refused in answers[BURST:-1]:
            assert int(refused.headers["retry-after"]) >= 1
            assert "rpc_rate_per_peer" in refused.json()["detail"]
        assert other == 503  # another regulator has a bucket of its own
    finally:
        ctx.close()


def test_a_regulators_console_session_is_held_to_the_same_rate(tmp_path: Path) -> None:
    """The regulator console's pages (proofs and verification read the chain too) went
    around the API's rate: a logged-in session now takes a token of the regulator's bucket
    on every request, and past it gets a 429 with Retry-After."""
    ctx = cellex_context(tmp_path)
    try:
        ctx.calls = CallLimiter(CallCaps(per_peer_rate=1.0, per_peer_burst=BURST), lambda: 0.0)
        init_node(tmp_path / "bafa", tmp_path / "authority", name="bafa", role="regulator")
        token = issue_credential(load_member_keys(tmp_path / "bafa"), ctx.keys.identity.member_id)
        app = create_regulator_app(ctx)

        async def browse() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://node") as client:
                login = await client.post("/console/login", data={"token": token})
                assert login.status_code == 303, login.text
                return [await client.get("/console/") for _ in range(BURST + 2)]

        codes = [a.status_code for a in asyncio.run(browse())]
        assert codes[:BURST] == [200] * BURST and codes[BURST:] == [429, 429], codes
    finally:
        ctx.close()
