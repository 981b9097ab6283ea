"""One member's signed key advert with bad keys: refused by name, the round goes on.

Before, the coordinator checked an advert's protocol and signature only. A key of the
wrong length, a mask key equal to the cipher key, or a key repeating another member's
was found when the phase closed (``check_roster``): ``RosterRefused`` escaped the
closing, the phase never closed, and every later call of every member (status, job
list, uploads) raised it as a caller's mistake, for good. A key of small order (the
all-zero key among them) passed even that: every honest member's masking failed on it,
each attempt aborted and the job failed with nobody at fault. Now each is refused when
advertised (``wrong_shape``, naming the member), a member refuses a roster holding one,
and an error in closing a phase ends the attempt, never the call.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation.errors import RefusalReason, RosterRefused, UpdateRefused
from qdspace.federation.host import JobHost
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_messages import KeyAdvert

HONEST = ("a", "b", "c", "d")
MEMBERS = (*HONEST, "h")
SIGNING = {m: SigningKey.generate() for m in MEMBERS}
VERIFY = {m: k.verify_key for m, k in SIGNING.items()}
UPDATE = np.full(4, 0.01, np.float32)
#: a point of order 8 on Curve25519 (and the all-zero and u = 1 keys below: small order)
ORDER_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def _job(members: tuple[str, ...] = MEMBERS) -> JobSpec:
    """Five members, threshold 3: a secure round needs 4, so it runs without h."""
    return JobSpec(
        job_id="j-adverts",
        coordinator="hub",
        model="logreg",
        shapes=((4,),),
        rounds=1,
        min_members=3,
        members=members,
        phase_timeout_s=10.0,
        secure_aggregation=True,
        threshold=len(members) // 2 + 1,
        update_clip=1.0,
    )


def _signed(advert: KeyAdvert, client: SecAggClient, **keys: bytes) -> KeyAdvert:
    """``advert`` with ``keys`` replaced, signed again by its member (a hostile member
    signs whatever it sends)."""
    bad = dataclasses.replace(advert, **keys, signature=b"")
    body = bad.signed_bytes(client.config.context)
    return dataclasses.replace(bad, signature=SIGNING[advert.member].sign(body).signature)


def _bad_keys(kind: str, own: KeyAdvert, other: KeyAdvert) -> dict[str, bytes]:
    return {
        "short mask key": {"mask_pk": b"x"},
        "long cipher key": {"cipher_pk": own.cipher_pk + b"\0"},
        "mask key is the cipher key": {"mask_pk": own.cipher_pk},
        "another member's mask key": {"mask_pk": other.mask_pk},
        "another member's mask key as cipher key": {"cipher_pk": other.mask_pk},
        "all-zero mask key": {"mask_pk": bytes(32)},
        "order-8 mask key": {"mask_pk": ORDER_8},
        "u=1 cipher key": {"cipher_pk": b"\x01" + bytes(31)},
    }[kind]


def _run_rest(coord: Coordinator, clients: dict[str, SecAggClient], now: float) -> None:
    """The honest members finish the attempt (shares, masked input, signatures, unmask)."""
    rnd, attempt = coord.round, coord.attempt
    for m, c in clients.items():
        coord.submit_shares(
            m, rnd, attempt, c.share_keys(coord.roster(m, rnd, attempt), VERIFY), now
        )
    for m, c in clients.items():
        coord.submit_masked(m, rnd, attempt, c.mask(UPDATE, coord.inbox(m, rnd, attempt)), now)
    split = coord.unmask_request("a", rnd, attempt)
    for m in split.survivors:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), now)
    request = coord.unmask_request("a", rnd, attempt)
    for m in request.survivors:
        coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), now)


@pytest.mark.parametrize(
    "kind",
    [
        "short mask key",
        "long cipher key",
        "mask key is the cipher key",
        "another member's mask key",
        "another member's mask key as cipher key",
        "all-zero mask key",
        "order-8 mask key",
        "u=1 cipher key",
    ],
)
def test_an_advert_with_bad_keys_is_refused_by_name_and_the_round_goes_on(kind: str) -> None:
    coord = Coordinator.start(_job(), np.zeros(4, np.float32), 0.0)
    rnd, attempt = coord.round, coord.attempt
    clients = {m: secagg_client(coord.job, m, rnd, attempt, SIGNING[m]) for m in HONEST}
    adverts = {m: c.advertise() for m, c in clients.items()}
    for m in HONEST:
        coord.submit_advert(m, rnd, attempt, adverts[m], VERIFY[m], 1.0)
    hostile = secagg_client(coord.job, "h", rnd, attempt, SIGNING["h"])
    own = hostile.advertise()
    bad = _signed(own, hostile, **_bad_keys(kind, own, adverts["a"]))
    with pytest.raises(UpdateRefused) as refused:
        coord.submit_advert("h", rnd, attempt, bad, VERIFY["h"], 2.0)
    assert refused.value.reason is RefusalReason.WRONG_SHAPE, refused.value
    assert "key advert of h" in str(refused.value) and len(str(refused.value)) < 200
    # nothing of it was kept: the phase closes at its deadline with the four others
    assert coord.tick(20.0) and coord.phase is Phase.SHARE_KEYS, coord.detail
    assert [a.member for a in coord.roster("a", rnd, attempt)] == list(HONEST)
    _run_rest(coord, clients, 21.0)
    assert coord.phase is Phase.DONE, coord.detail
    assert coord.history[0].members == HONEST


def test_the_last_advert_closing_the_phase_with_a_bad_key_does_not_wedge_the_job() -> None:
    """Three members, the hostile one last: its advert would have closed the phase."""
    coord = Coordinator.start(_job(("a", "b", "h")), np.zeros(4, np.float32), 0.0)
    rnd, attempt = coord.round, coord.attempt
    for m in ("a", "b"):
        client = secagg_client(coord.job, m, rnd, attempt, SIGNING[m])
        coord.submit_advert(m, rnd, attempt, client.advertise(), VERIFY[m], 1.0)
    hostile = secagg_client(coord.job, "h", rnd, attempt, SIGNING["h"])
    own = hostile.advertise()
    with pytest.raises(UpdateRefused) as refused:
        coord.submit_advert(
            "h", rnd, attempt, _signed(own, hostile, mask_pk=own.cipher_pk), VERIFY["h"], 2.0
        )
    assert refused.value.reason is RefusalReason.WRONG_SHAPE
    # later calls answer: the attempt ends at its deadline (too few without h) and the
    # next opens, until the job fails saying why
    assert coord.tick(11.0) and coord.attempt == attempt + 1, coord.detail
    assert "2 members advertised keys, the round needs 3" in coord.detail
    for now in (22.0, 33.0):
        coord.tick(now)
    assert coord.phase is Phase.FAILED and "round 1 failed 3 times" in coord.detail


def test_an_error_closing_a_phase_ends_the_attempt_not_the_call() -> None:
    """Defence in depth: a roster the closing refuses (here an advert put straight into
    the attempt's state, as one accepted before a check existed would be) aborts the
    attempt; every later call still answers."""
    coord = Coordinator.start(_job(("a", "b", "h")), np.zeros(4, np.float32), 0.0)
    rnd, attempt = coord.round, coord.attempt
    adverts = {}
    for m in ("a", "b", "h"):
        client = secagg_client(coord.job, m, rnd, attempt, SIGNING[m])
        adverts[m] = client.advertise()
        if m == "h":
            adverts[m] = _signed(adverts[m], client, mask_pk=bytes(32))
    server = coord._secagg
    assert server is not None
    for m in ("a", "b", "h"):
        server._adverts[m], server._keys[m] = adverts[m], VERIFY[m]
    assert coord.tick(11.0)  # raised RosterRefused to the caller, for ever
    assert coord.attempt == attempt + 1 and coord.phase is Phase.ADVERTISE, coord.detail
    assert f"attempt {attempt} aborted" in coord.detail and "key advert of h" in coord.detail
    assert coord.status().phase is Phase.ADVERTISE


def test_a_member_refuses_a_roster_holding_a_small_order_key() -> None:
    """A coordinator that passes such an advert on (or forges one) gets no shares."""
    job = _job(("a", "b", "h"))
    clients = {m: secagg_client(job, m, 1, 1, SIGNING[m]) for m in ("a", "b", "h")}
    adverts = {m: c.advertise() for m, c in clients.items()}
    adverts["h"] = _signed(adverts["h"], clients["h"], mask_pk=bytes(32))
    roster = tuple(adverts[m] for m in sorted(adverts))
    with pytest.raises(RosterRefused, match="key advert of h: its mask key is of small order"):
        clients["a"].share_keys(roster, VERIFY)


def test_the_jobs_host_still_answers_after_a_bad_advert(tmp_path: Path) -> None:
    """The node's view of the job (GetStatus, ListJobs) reads through the host: it
    raised "roster has repeated or malformed public keys" for ever."""
    job = _job(("a", "b", "h"))
    host = JobHost.create(tmp_path, job, [np.zeros(4, np.float32)], SigningKey.generate(), 0.0)
    status = host.status(0.0)
    rnd, attempt = status.round, status.attempt
    for m in ("a", "b"):
        client = secagg_client(job, m, rnd, attempt, SIGNING[m])
        host.submit_advert(m, rnd, attempt, client.advertise(), VERIFY[m], 1.0)
    hostile = secagg_client(job, "h", rnd, attempt, SIGNING["h"])
    own = hostile.advertise()
    with pytest.raises(UpdateRefused) as refused:
        host.submit_advert(
            "h", rnd, attempt, _signed(own, hostile, mask_pk=own.cipher_pk), VERIFY["h"], 2.0
        )
    assert refused.value.reason is RefusalReason.WRONG_SHAPE
    for now in (20.0, 3600.0, 86400.0 * 30):
        host.view(now)
    assert host.status(86400.0 * 31).phase is Phase.FAILED
