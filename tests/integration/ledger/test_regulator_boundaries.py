"""Regulator proof routes: an id the ledger never saw costs the node no record load.

A ``record_batch`` id names a row range (``inspection:1-2000000000``); loading the range
before checking that such a leaf exists would let any credential holder make the node
read as many rows as it likes. The proof is built first: an unknown id is a 404 at once.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from qdspace.ledger.queue import LeafQueue
from qdspace.node.api.regulator import regulator_router

from .conftest import ChainProcess
from .test_regulator import TOKEN, regulator, serve

pytestmark = pytest.mark.integration


def test_unknown_entries_are_404_before_any_record_is_loaded(
    chain: ChainProcess, queue: LeafQueue
) -> None:
    loaded: list[tuple[str, str]] = []

    def load(kind: str, ref_id: str) -> bytes | None:
        loaded.append((kind, ref_id))
        return None

    app = FastAPI()
    app.include_router(
        regulator_router(
            queue=queue, client=chain.client(), require_regulator=regulator, record_loader=load
        )
    )
    with (
        serve(app) as base_url,
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        for path in (
            "/v1/regulator/proofs/record_batch/inspection:1-2000000000",
            "/v1/regulator/inspections/EL-none/proof",
            "/v1/regulator/agreements/agr-none/proof",
        ):
            response = http.get(path)
            assert response.status_code == 404, response.text
    assert loaded == []
