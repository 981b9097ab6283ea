"""ContractRequestMessages sent side by side, on SQLite and PostgreSQL (`db_backend`): the
DSP app in process with real HTTP requests, a real contract runtime on a real database.

- Eight requests of one consumerPid at once open one negotiation, and all eight are
  answered with its one providerPid (were: one negotiation each, eight providerPids,
  and later retries answered with whichever binding the database returned first).
- Six requests of one member at once, with a quota of one negotiation an hour, open
  one; five are refused 429 (were: each read the count before any was written, and
  all six opened).
- Six transfer requests of one member at once (the runtime's, which the gRPC wire
  calls), with a quota of one transfer an hour, open one (were: all six).
- The key behind the first (``uq_dsp_process_peer_pid``): a second binding of one
  peer's pid is never written, whatever writes it, and a peer naming for a process a
  pid it has for another is refused, nothing changed.

Each check of the races lets every request pass the read that the race is about (the
lookup of the consumerPid, the count of the quota) before any of them goes on: the old
code then opened one negotiation per request every time, not only when the requests
happened to interleave. The fixed code's answers do not depend on the order the
requests take (the count's second meeting only waits a while: the fixed code lets one
request of the member count at a time, so that meeting never fills)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from qdspace.connector.contract_errors import TransferQuotaError
from qdspace.connector.contract_store import DspProcess
from qdspace.connector.contract_store.dsp import PeerPidTaken

from ..connector.test_transfer_prune_runtime import Provider as TransferProvider
from .conftest import (
    DSP,
    Caller,
    Provider,
    provider,
    request_message,
    with_transfers,
)
from .test_dsp_peer_ids import agreed_as_provider, sunarc_of

#: how long a request waits for the others at a rendezvous before the test fails
RENDEZVOUS_S = 60.0
#: how long requests wait for each other where the fixed code lets one at a time
PATIENCE_S = 2.0


@pytest.fixture
def cellex(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Provider]:
    """Cellex on a SQLite file, or on a new PostgreSQL schema (dropped after)."""
    with ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'cellex.db'}"
        if db_backend == "postgres":
            url, _ = stack.enter_context(fresh_pg_schema("dspconcurrent"))
        made = provider(tmp_path, url=url)
        try:
            yield made
        finally:
            made.close()


@dataclass(frozen=True)
class Meeting:
    """`parties` calls wait for each other, up to `within` seconds; `strict`: one that
    does not fill is a failure of the test, else the calls go on when it runs out (calls
    that cannot meet: made one at a time, as the fixed code makes them)."""

    parties: int
    within: float = RENDEZVOUS_S
    strict: bool = True


def soft(parties: int) -> Meeting:
    """A meeting the fixed code never fills (see `Meeting`)."""
    return Meeting(parties, PATIENCE_S, strict=False)


def rendezvous(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *meetings: Meeting
) -> list[BaseException]:
    """The calls of ``owner.name`` meet as `meetings` say, in order (the first meeting's
    parties are the first calls, and so on); later calls go straight on. The strict
    meetings that did not fill are in the list returned."""
    inner = getattr(owner, name)
    barriers = [(threading.Barrier(m.parties, timeout=m.within), m) for m in meetings]
    seen, lock, failed = [0], threading.Lock(), []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            call = seen[0]
            seen[0] += 1
        for barrier, meeting in barriers:
            if call >= meeting.parties:
                call -= meeting.parties
                continue
            try:
                barrier.wait()
            except threading.BrokenBarrierError as exc:
                if meeting.strict:
                    failed.append(exc)
            break
        return inner(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return failed


def at_once(caller: Caller, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Each of `bodies` posted to ``/negotiations/request``, all at once."""

    async def send() -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                *(
                    caller.http.post("/negotiations/request", json=b, headers=caller.headers())
                    for b in bodies
                )
            )
        )

    return caller.provider.loop.run(send())


def count(cellex: Provider, sql: str, **params: Any) -> int:
    with cellex.runtime.store.engine.connect() as connection:
        return int(connection.execute(text(sql), params).scalar_one())


def test_one_consumer_pid_sent_eight_times_at_once_opens_one_negotiation(
    cellex: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    cpid = f"urn:uuid:{uuid.uuid4()}"
    body = request_message(sunarc, cpid)
    # every request looks its consumerPid up before any of them binds it
    late = rendezvous(monkeypatch, cellex.runtime.store.dsp, "by_peer_pid", Meeting(8))

    answers = at_once(sunarc, [body] * 8)

    assert late == []
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    provider_pids = {a.json()["providerPid"] for a in answers}
    assert len(provider_pids) == 1, provider_pids  # was: 8, one per request
    assert {a.json()["consumerPid"] for a in answers} == {cpid}
    bound = "SELECT count(*) FROM dsp_process WHERE kind = 'negotiation' AND peer_pid = :p"
    assert count(cellex, bound, p=cpid) == 1
    assert count(cellex, "SELECT count(*) FROM contract_negotiation") == 1
    # a retry later: the same negotiation, by its one binding
    (ppid,) = provider_pids
    again = sunarc.post("/negotiations/request", body)
    assert again.status_code == 201 and again.json()["providerPid"] == ppid, again.text
    assert sunarc.get(f"/negotiations/{ppid}").json()["consumerPid"] == cpid


def test_six_requests_at_once_open_no_more_than_the_quota_of_one(
    cellex: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    cellex.runtime.negotiations_per_hour = 1
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    bodies = [request_message(sunarc, f"urn:uuid:{uuid.uuid4()}") for _ in range(6)]
    # every request reads the member's count (before its body) before any goes on, and
    # again where it opens (the old code: all six counted none opened, and opened six)
    store = cellex.runtime.store
    late = rendezvous(monkeypatch, store, "negotiations_opened_by", Meeting(6), soft(6))

    answers = at_once(sunarc, bodies)

    assert late == []
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [429] * 5, [a.text for a in answers]  # was: six 201
    refused = next(a for a in answers if a.status_code == 429).json()
    assert "negotiations_per_member_hour 1" in refused["reason"][0], refused
    assert count(cellex, "SELECT count(*) FROM contract_negotiation") == 1
    # the refused requests' bindings are gone: their retries are decided afresh
    assert count(cellex, "SELECT count(*) FROM dsp_process") == 1


def test_a_second_binding_of_a_peers_pid_is_never_written(cellex: Provider) -> None:
    """The store's key, met without the app's lock (another node process on the same
    database): `bind` hands back the binding there, and writes nothing; a peer that
    names for one of our processes the pid it has for another is refused."""
    dsp = cellex.runtime.store.dsp
    first = DspProcess("negotiation", "n-1", "provider", "sunarc", "p-1", "https://s/dsp", "c-1")
    assert dsp.bind(first) is None
    second = DspProcess("negotiation", "n-2", "provider", "sunarc", "p-2", "https://s/dsp", "c-1")
    assert dsp.bind(second) == first
    assert dsp.by_local("negotiation", "n-2") is None
    # the same pid of another peer, or of another kind, is another process
    other = DspProcess("negotiation", "n-3", "provider", "polycell", "p-3", "https://p/dsp", "c-1")
    assert dsp.bind(other) is None
    transfer = DspProcess("transfer", "c-1", "provider", "sunarc", "p-4", "https://s/dsp", "c-1")
    assert dsp.bind(transfer) is None
    # ours as the consumer: two of them with pids not known yet, then the provider names
    # for the second the providerPid it gave the first
    for local in ("n-4", "n-5"):
        dsp.bind(DspProcess("negotiation", local, "consumer", "polycell", local, "https://p/dsp"))
    dsp.set_peer_pid("negotiation", "n-4", "pp-1")
    with pytest.raises(PeerPidTaken, match="names another negotiation"):
        dsp.set_peer_pid("negotiation", "n-5", "pp-1")
    assert dsp.by_local("negotiation", "n-5") == DspProcess(
        "negotiation", "n-5", "consumer", "polycell", "n-5", "https://p/dsp"
    )


def test_six_transfer_requests_at_once_open_no_more_than_the_quota_of_one(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'cellex.db'}"
        if db_backend == "postgres":
            url, _ = stack.enter_context(fresh_pg_schema("transferconcurrent"))
        cellex = TransferProvider(url, tmp_path)
        stack.callback(cellex.qdm.engine.dispose)
        cellex.rt.transfers_per_hour = 1
        # the count of each request meets the others' (the old code: all six counted
        # none opened, and opened six)
        rendezvous(monkeypatch, cellex.rt.store, "transfers_opened_by", soft(6))

        def ask(i: int) -> str:
            request = cellex.request(f"tx-{i}-{uuid.uuid4().hex}")
            try:
                cellex.rt.transfer_message(cellex.consumer, request)
            except TransferQuotaError:
                return "refused"
            return "opened"

        with ThreadPoolExecutor(6) as pool:
            answers = sorted(pool.map(ask, range(6)))

        assert answers == ["opened"] + ["refused"] * 5  # was: six opened
        assert len(cellex.rt.store.transfers()) == 1


def test_six_dsp_transfer_requests_at_once_open_no_more_than_the_quota_of_one(
    cellex: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSP TransferRequestMessage checked the quota and saved its transfer outside the
    member's lock: six sent at once each counted none opened, and opened six."""
    with_transfers(cellex)
    sunarc = sunarc_of(cellex)
    agreement_id = agreed_as_provider(cellex, sunarc)
    cellex.runtime.transfers_per_hour = 1
    # each request counts twice (before its body is read, and as it opens): both meet
    rendezvous(monkeypatch, cellex.runtime.store, "transfers_opened_by", soft(6), soft(6))
    bodies = [
        {
            "@context": [DSP],
            "@type": "TransferRequestMessage",
            "consumerPid": f"urn:uuid:{uuid.uuid4()}",
            "agreementId": agreement_id,
            "format": "HttpData-PULL",
            "callbackAddress": "https://sunarc.example/dsp",
        }
        for _ in range(6)
    ]

    async def send() -> list[httpx.Response]:
        headers = sunarc.headers()
        posts = (sunarc.http.post("/transfers/request", json=b, headers=headers) for b in bodies)
        return list(await asyncio.gather(*posts))

    answers = sorted(r.status_code for r in cellex.loop.run(send()))
    assert answers == [201] + [429] * 5, answers  # was: six 201
    assert len(cellex.runtime.store.transfers()) == 1
