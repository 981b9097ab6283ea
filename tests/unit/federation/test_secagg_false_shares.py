"""A false share, or silence after a masked input, must not steer a secure round.

Three members, threshold 2. Before, a hostile member h dealt one garbage share to b; b
reported it and sent no masked input; leaving both out would end the job, so both
stayed, and the round was summed from a and h alone: h read a's exact update from the
published model (``2 * step - own``), every round, and was never left out. Now an
attempt whose reported pair stays is not aggregated, and a member reported again in a
later attempt is left out even if that ends the job.

Before, too, a survivor that sent its masked input and then withheld its consistency
signature or unmask response made every attempt of a tight job abort, with nobody at
fault; now it is left out of the later attempts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from nacl.signing import SigningKey

from qdspace.federation.errors import BadShares
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.secagg import SecAggClient

MEMBERS = ("a", "b", "h")
SIGNING = {m: SigningKey.generate() for m in (*MEMBERS, "c", "d")}
VERIFY = {m: k.verify_key for m, k in SIGNING.items()}


def _job(members: tuple[str, ...] = MEMBERS, coordinator: str = "z", rounds: int = 2) -> JobSpec:
    return JobSpec(
        job_id="j-false-shares",
        coordinator=coordinator,
        model="logreg",
        shapes=((8,),),
        rounds=rounds,
        min_members=len(members) // 2 + 1,
        members=members,
        phase_timeout_s=10.0,
        secure_aggregation=True,
        threshold=len(members) // 2 + 1,
        update_clip=1.0,
    )


def _to_masked(
    coord: Coordinator, garble: dict[str, str], reports: dict[str, str], now: float
) -> dict[str, SecAggClient]:
    """One attempt up to its masked inputs: each dealer in ``garble`` deals a garbage
    share to the member named; a member finding a bad share reports it (as the node's
    runner does), one in ``reports`` reports the member named though its shares were
    good; the others send their masked input."""
    rnd, attempt = coord.round, coord.attempt
    present = [m for m in coord.job.members if m not in coord.excluded]
    clients = {m: secagg_client(coord.job, m, rnd, attempt, SIGNING[m]) for m in present}
    for m, c in clients.items():
        coord.submit_advert(m, rnd, attempt, c.advertise(), VERIFY[m], now)
    for m, c in clients.items():
        shares = c.share_keys(coord.roster(m, rnd, attempt), VERIFY)
        shares = [
            dataclasses.replace(s, ciphertext=bytes(len(s.ciphertext)))
            if garble.get(m) == s.receiver
            else s
            for s in shares
        ]
        coord.submit_shares(m, rnd, attempt, shares, now)
    update = np.full(8, 0.01, np.float32)
    for m, c in clients.items():
        if coord.attempt != attempt:
            break
        if m in reports:
            coord.submit_report(m, rnd, attempt, reports[m], now)
            continue
        try:
            masked = c.mask(update, coord.inbox(m, rnd, attempt))
        except BadShares as exc:
            coord.submit_report(m, rnd, attempt, exc.member, now)
            continue
        coord.submit_masked(m, rnd, attempt, masked, now)
    return clients


def test_a_garbage_share_that_sidelines_a_member_aborts_then_leaves_out_the_dealer() -> None:
    coord = Coordinator.start(_job(), np.zeros(8, np.float32), 0.0)
    _to_masked(coord, {"h": "b"}, {}, 1.0)
    # the sum would have been {a, h}: h would read a's update; nothing is summed
    assert coord.version == 0 and coord.history == [], coord.detail
    assert coord.attempt == 2 and coord.phase is Phase.ADVERTISE, coord.detail
    assert "attempt 1 aborted" in coord.detail and "b reported h's shares" in coord.detail
    assert coord.excluded == frozenset() and coord.accused == frozenset({"h"})
    _to_masked(coord, {"h": "b"}, {}, 2.0)
    # named again: h is out, and two members are too few for a secure round
    assert "h was reported in an earlier attempt too: h is left out" in coord.detail
    assert coord.excluded == frozenset({"h"}) and coord.phase is Phase.FAILED, coord.detail
    assert coord.version == 0 and coord.history == []


def test_a_false_report_against_an_honest_member_never_yields_a_sum_of_two() -> None:
    """h receives good shares from a and says otherwise, in two attempts: a is left out
    the second time (h cannot be told from an honest reporter) and the job ends; no sum
    is ever made without a member h took out."""
    coord = Coordinator.start(_job(), np.zeros(8, np.float32), 0.0)
    _to_masked(coord, {}, {"h": "a"}, 1.0)
    assert coord.history == [] and coord.accused == frozenset({"a"}), coord.detail
    _to_masked(coord, {}, {"h": "a"}, 2.0)
    assert coord.excluded == frozenset({"a"}) and coord.phase is Phase.FAILED, coord.detail
    assert coord.history == []


def test_an_accused_member_that_deals_good_shares_after_keeps_its_seat() -> None:
    """One report whose sides stay costs an attempt only: the next, clean, aggregates."""
    coord = Coordinator.start(_job(), np.zeros(8, np.float32), 0.0)
    _to_masked(coord, {"h": "b"}, {}, 1.0)
    clients = _to_masked(coord, {}, {}, 2.0)
    rnd, attempt = coord.round, coord.attempt
    split = coord.unmask_request("a", rnd, attempt)
    for m in split.survivors:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), 3.0)
    request = coord.unmask_request("a", rnd, attempt)
    for m in request.survivors:
        coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), 3.0)
    assert coord.version == 1 and coord.history[0].members == MEMBERS, coord.detail
    assert coord.excluded == frozenset()


def test_a_survivor_withholding_its_consistency_signature_is_left_out() -> None:
    """The coordinator a is a member, threshold 2: b and h must both sign. h sends its
    masked input and then no signature: the attempt aborts, h is left out (and the two
    left are too few, so the job ends at once, naming h, instead of each attempt
    aborting the same way)."""
    coord = Coordinator.start(_job(coordinator="a"), np.zeros(8, np.float32), 0.0)
    clients = _to_masked(coord, {}, {}, 1.0)
    rnd, attempt = coord.round, coord.attempt
    split = coord.unmask_request("a", rnd, attempt)
    for m in ("a", "b"):
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), 2.0)
    assert coord.tick(20.0)
    assert coord.excluded == frozenset({"h"}), coord.detail
    assert "h sent a masked input and then no consistency signature" in coord.detail
    assert coord.phase is Phase.FAILED and coord.history == []


def test_survivors_withholding_their_unmask_responses_are_left_out() -> None:
    """Four members, threshold 3: c and d send their masked input, then no unmask
    response; two responses are under the threshold. Both are left out."""
    members = ("a", "b", "c", "d")
    coord = Coordinator.start(_job(members), np.zeros(8, np.float32), 0.0)
    clients = _to_masked(coord, {}, {}, 1.0)
    rnd, attempt = coord.round, coord.attempt
    split = coord.unmask_request("a", rnd, attempt)
    for m in members:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), 2.0)
    request = coord.unmask_request("a", rnd, attempt)
    for m in ("a", "b"):
        coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), 3.0)
    assert coord.tick(20.0)
    assert coord.excluded == frozenset({"c", "d"}), coord.detail
    assert "c, d sent a masked input and then no unmask response" in coord.detail
    assert coord.phase is Phase.FAILED and coord.history == []
