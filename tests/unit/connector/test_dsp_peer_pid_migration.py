"""Migration ``0030_dsp_peer_pid`` on a database that took concurrent DSP requests before
it, on SQLite and PostgreSQL (`db_backend`): it holds several bindings of one consumer's
pid. The migration keeps the first of each set (the binding of the negotiation opened
first; one whose process is gone comes last; ties by local id), deletes the others'
bindings (their negotiations stay), and the key then refuses a second binding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, inspect, select

from qdspace.connector.contract_store import ContractStore, DspProcess
from qdspace.connector.contract_store.dsp import dsp_table
from qdspace.connector.negotiation import ContractRequest, Role, open_negotiation
from qdspace.connector.storage import current_revision, head_revision, migrate
from qdspace.policies.model import OfferTerms, make_offer

T0 = datetime(2026, 5, 1, tzinfo=UTC)
BEFORE = "0029_transfer_prune"
CALLBACK = "https://sunarc.example/dsp"


def _opened(store: ContractStore, negotiation_id: str, seconds: int) -> None:
    """A negotiation Cellex provides to SunArc, opened at T0 + `seconds`."""
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({"ORD-1"}), retention_days=9)
    offer = make_offer("offer-1", "cellex", "inspections", terms)
    at = T0 + timedelta(seconds=seconds)
    request = ContractRequest(f"{negotiation_id}-m1", negotiation_id, "sunarc", offer, at)
    store.save_negotiation(None, open_negotiation(request, Role.PROVIDER, signed=False))


def _bound(engine: Engine) -> set[tuple[str, str, str | None]]:
    """(kind, local id, peer's pid) of every binding."""
    t = dsp_table
    with engine.connect() as connection:
        rows = connection.execute(select(t.c.kind, t.c.local_id, t.c.peer_pid)).all()
    return {(r.kind, r.local_id, r.peer_pid) for r in rows}


def test_duplicate_bindings_of_a_peers_pid_are_cut_to_the_first_and_then_refused(
    bare_engine: Engine,
) -> None:
    engine = bare_engine
    migrate(engine, BEFORE)
    store = ContractStore(engine, bytes(32))

    def bind(kind: str, local: str, peer: str, pid: str | None) -> None:
        row = DspProcess(kind, local, "provider", peer, f"p-{local}", CALLBACK, pid)
        assert store.dsp.bind(row) is None

    # four requests of consumerPid c-1 at once: four negotiations, the second opened first
    for local, seconds in (("n-a", 2), ("n-b", 1), ("n-c", 3)):
        _opened(store, local, seconds)
        bind("negotiation", local, "sunarc", "c-1")
    bind("negotiation", "n-gone", "sunarc", "c-1")  # its negotiation pruned since
    # two of another member with no process left: the lower local id is kept
    bind("negotiation", "x-2", "polycell", "c-9")
    bind("negotiation", "x-1", "polycell", "c-9")
    # what never met: another kind, another peer, a pid not known yet (twice)
    bind("transfer", "c-1", "sunarc", "c-1")
    bind("negotiation", "n-other", "polycell", "c-1")
    bind("negotiation", "n-new-1", "sunarc", None)
    bind("negotiation", "n-new-2", "sunarc", None)

    migrate(engine)

    assert current_revision(engine) == head_revision()
    assert _bound(engine) == {
        ("negotiation", "n-b", "c-1"),
        ("negotiation", "x-1", "c-9"),
        ("transfer", "c-1", "c-1"),
        ("negotiation", "n-other", "c-1"),
        ("negotiation", "n-new-1", None),
        ("negotiation", "n-new-2", None),
    }
    assert {n.negotiation_id for n in store.negotiations()} == {"n-a", "n-b", "n-c"}
    keys = inspect(engine).get_unique_constraints("dsp_process")
    assert "uq_dsp_process_peer_pid" in {k["name"] for k in keys}
    # the key holds now: a retry's binding meets the kept one, nothing written
    again = DspProcess("negotiation", "n-d", "provider", "sunarc", "p-n-d", CALLBACK, "c-1")
    assert store.dsp.bind(again) == store.dsp.by_local("negotiation", "n-b")
    assert store.dsp.by_local("negotiation", "n-d") is None
    migrate(engine)  # at the newest revision: nothing to do
    assert len(_bound(engine)) == 6
