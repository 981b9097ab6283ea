"""A self-signed hostile passport, and a hostile endpoint under an honest one, through the
real verification paths: the regulator's ``/v1/regulator/verify`` (the router in process,
over ``httpx.ASGITransport``; the console's drop zone calls the same `verify_posted`) and
`verify_document` (``qdspace verify``).

Anyone can sign a passport with their own key. A period of blocks 0..10**12 had the
verifier read logs in 5*10**8 pages, for hours: a period is bounded (to_block not before
from_block, at most `MAX_PERIOD_BLOCKS` blocks) and refused as the caller's mistake (422,
naming the field) before the chain is asked anything. The bound is counted in pages the
endpoint served, not in time: the endpoint refuses every page past the cap's, so the old
code failed after a few hundred pages. A block timestamp no calendar holds is the chain's
fault (503), never the caller's "malformed passport" (422) nor a 500; so is a log too short
to decode or an answer that is no JSON-RPC object.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.ledger.client import LOG_PAGE_BLOCKS, LedgerClient
from qdspace.ledger.errors import ChainUnavailable, PassportFormatError
from qdspace.ledger.passport import MAX_PERIOD_BLOCKS, PASSPORT_TYPE, issue_passport
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.ledger.verify import verify_document
from qdspace.node.api.regulator import regulator_router

from .test_hostile_answers import Garbling
from .test_hostile_endpoint import CHAIN_ID, CONTRACT

pytestmark = pytest.mark.integration

CAP_PAGES = MAX_PERIOD_BLOCKS // LOG_PAGE_BLOCKS
EPOCH_1 = "1970-01-01T00:00:01Z"  # the endpoint's timestamp of every block


class Counting(Garbling):
    """Counts the pages of logs asked; refuses every page past the cap's (what an honest
    verifier never asks), and answers `timestamp` for every block."""

    def __init__(self) -> None:
        self.log_pages = 0
        self.timestamp = "0x1"
        super().__init__()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_getLogs":
            self.log_pages += 1
            if self.log_pages > CAP_PAGES:
                raise RuntimeError("more pages of logs than a passport may need")
        answer = super().call(method, params)
        if method == "eth_getBlockByNumber":
            answer["timestamp"] = self.timestamp
        return answer


@pytest.fixture
def endpoint() -> Iterator[Counting]:
    fake = Counting()
    yield fake
    fake.close()


def _passport(from_block: int, to_block: int) -> dict[str, Any]:
    """A passport of no activity over the period, signed by a key of its own (as anyone
    can), with the endpoint's timestamps."""
    key = SigningKey.generate()
    verify_key = bytes(key.verify_key)
    body = {
        "type": PASSPORT_TYPE, "version": 1,
        "member_id": "m-" + hashlib.sha256(verify_key).hexdigest()[:12],
        "verify_key": "0x" + verify_key.hex(), "anchorer": "0x" + "11" * 20,
        "chain_id": CHAIN_ID, "contract": CONTRACT,
        "period": {"from_block": from_block, "to_block": to_block,
                   "from_time": EPOCH_1, "to_time": EPOCH_1},
        "activity": {}, "issued_at": "2024-01-01T00:00:00Z",
    }  # fmt: skip
    signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return body | {"signature": "0x" + key.sign(signed).signature.hex()}


def _post(endpoint: Counting, document: dict[str, Any]) -> httpx.Response:
    app = FastAPI()
    engine = create_engine("sqlite://")
    ensure_schema(engine)
    client = LedgerClient(endpoint.url, CONTRACT, expected_chain_id=CHAIN_ID, timeout_s=5)
    app.include_router(
        regulator_router(queue=LeafQueue(engine), client=client, require_regulator=lambda: None)
    )

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return await http.post("/v1/regulator/verify", json=document)

    return asyncio.run(post())


@pytest.mark.parametrize(
    ("period", "why"),
    [
        ((0, 10**12), r"period\.from_block\.\.to_block spans 1000000000001 blocks, over the"),
        ((0, MAX_PERIOD_BLOCKS), "spans 1000001 blocks, over the 1000000 a passport may"),
        ((5, 4), r"period\.to_block 4 is before period\.from_block 5"),
        ((0, 2**63), r"period\.to_block"),
    ],
)
def test_a_period_out_of_bounds_is_refused_before_any_log_is_read(
    endpoint: Counting, period: tuple[int, int], why: str
) -> None:
    document = _passport(*period)
    response = _post(endpoint, document)
    assert response.status_code == 422, response.text
    assert "malformed passport" in response.text
    assert re.search(why, response.json()["detail"]), response.text
    with pytest.raises(PassportFormatError, match=why):
        verify_document(json.dumps(document), endpoint.url)
    assert endpoint.log_pages == 0


def test_a_period_at_the_cap_is_verified_in_its_pages(endpoint: Counting) -> None:
    response = _post(endpoint, _passport(0, MAX_PERIOD_BLOCKS - 1))
    assert response.status_code == 200, response.text
    assert response.json()["verdict"]["valid"], response.text
    assert endpoint.log_pages == CAP_PAGES


@pytest.mark.parametrize("timestamp", ["0x" + "f" * 12, "0x" + "f" * 20])
def test_a_block_time_no_calendar_holds_is_the_chains_fault(
    endpoint: Counting, timestamp: str
) -> None:
    endpoint.timestamp = timestamp
    response = _post(endpoint, _passport(0, 10))
    assert response.status_code == 503, response.text
    assert "malformed passport" not in response.text
    with pytest.raises(ChainUnavailable, match="block timestamp"):
        verify_document(json.dumps(_passport(0, 10)), endpoint.url)


@pytest.mark.parametrize("broken", ["short log", "no JSON-RPC object"])
def test_a_malformed_chain_answer_is_the_chains_fault(endpoint: Counting, broken: str) -> None:
    if broken == "short log":
        endpoint.log_data = "0x01"
    else:
        endpoint.whole = 5
    response = _post(endpoint, _passport(0, 10))
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == "the ledger chain is unreachable; try again later"


def test_a_passport_over_the_cap_is_not_issued(endpoint: Counting) -> None:
    """The node's own passports keep to the bound its verifiers hold them to."""
    engine = create_engine("sqlite://")
    ensure_schema(engine)
    client = LedgerClient(endpoint.url, CONTRACT, timeout_s=5)
    key = SigningKey.generate()
    endpoint.head = MAX_PERIOD_BLOCKS + 5
    for to_block in (MAX_PERIOD_BLOCKS, None):  # asked, or the head
        with pytest.raises(PassportFormatError, match="ask for a shorter period"):
            issue_passport(LeafQueue(engine), client, key, "m-1", "0x" + "11" * 20, 0, to_block)
    passport = issue_passport(LeafQueue(engine), client, key, "m-1", "0x" + "11" * 20, 6, None)
    assert (passport.period.from_block, passport.period.to_block) == (6, MAX_PERIOD_BLOCKS + 5)
    # no start given (the CLI's and the regulator route's default): as far back as may be
    passport = issue_passport(LeafQueue(engine), client, key, "m-1", "0x" + "11" * 20, None, None)
    assert (passport.period.from_block, passport.period.to_block) == (6, MAX_PERIOD_BLOCKS + 5)
    endpoint.head = 7  # a young chain: from its first block
    passport = issue_passport(LeafQueue(engine), client, key, "m-1", "0x" + "11" * 20)
    assert (passport.period.from_block, passport.period.to_block) == (0, 7)
