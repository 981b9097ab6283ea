"""The hourly prune of the contract jobs: besides the negotiations that ended without an
agreement long ago, it deletes a member's beyond `ENDED_NEGOTIATIONS_PER_MEMBER` (a member
at its quota otherwise kept hundreds of refused requests an hour for the whole keep)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest
from nacl.signing import SigningKey

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.negotiation import (
    ContractRequest,
    PartyKeys,
    Role,
    Termination,
    apply,
    open_negotiation,
)
from qdspace.node.rpc import contracts_jobs
from qdspace.node.rpc.contracts_jobs import ContractJobs
from qdspace.policies.model import OfferTerms, make_offer

from .conftest import sqlite_runtime

KEY = SigningKey(b"o" * 32)
KEYS = PartyKeys(KEY.verify_key, SigningKey(b"c" * 32).verify_key)


def refused(store: ContractStore, neg: str, consumer: str, at: dt.datetime) -> None:
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({"ORD-1"}), retention_days=30)
    offer = make_offer("offer-1", "sunarc", "inspections", terms)
    n = open_negotiation(ContractRequest(f"{neg}-m1", neg, consumer, offer, at), Role.PROVIDER)
    store.save_negotiation(None, n)
    store.save_negotiation(n, apply(n, Termination(f"{neg}-m2", neg, "sunarc", "no", at), KEYS))


def test_the_prune_job_caps_what_a_member_keeps_of_refused_negotiations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused within the keep, so only the cap takes them: the hostile member keeps its
    newest, the other member (under the cap) all of its own; none opened within the hour
    the member's quota counts is taken (it would give the member its quota again)."""
    monkeypatch.setattr(contracts_jobs, "ENDED_NEGOTIATIONS_PER_MEMBER", 2)
    rt = sqlite_runtime(tmp_path)
    now = rt.clock.now()
    for i in range(5):  # the last three within the hour its quota counts
        refused(rt.store, f"neg-h{i}", "hostile", now - dt.timedelta(minutes=90 - 20 * i))
    refused(rt.store, "neg-o0", "other", now - dt.timedelta(minutes=120))
    jobs = ContractJobs.__new__(ContractJobs)  # no loops started: only the prune is driven
    jobs.client = SimpleNamespace(runtime=rt)  # type: ignore[assignment]
    try:
        asyncio.run(jobs._prune())
        left = sorted(n.negotiation_id for n in rt.store.negotiations())
    finally:
        rt.qdm.dispose()
    assert left == ["neg-h2", "neg-h3", "neg-h4", "neg-o0"]  # h2: beyond the cap, in the hour
