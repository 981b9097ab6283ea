"""Members report key shares that do not open, and the coordinator leaves members out.

Before, a member dealing shares that do not decrypt was found only by the members that
received them; each of them dropped out of the attempt on its own, the coordinator was
told nothing and reopened the attempt with the same roster, and one member could make
every attempt abort until the job failed. Now a member reports whose shares did not
open (instead of sending a masked input) and the coordinator, at the attempt's end,
leaves out a member named by ``t`` reporters alone, and both sides of any other report
(``SecAggServer.left_out``).
"""

from __future__ import annotations

import os
from collections.abc import Collection

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation.errors import BadShares, RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_messages import EncryptedShare

SEVEN = ("a", "b", "c", "d", "e", "f", "m")
FIVE = ("a", "b", "c", "d", "m")
SIGNING = {m: SigningKey.generate() for m in SEVEN}
VERIFY = {m: k.verify_key for m, k in SIGNING.items()}
UPDATE = np.full(8, 0.01, np.float32)


def _job(members: tuple[str, ...] = SEVEN, *, rounds: int = 1) -> JobSpec:
    """Seven members: threshold 4, a secure round needs 5; five: threshold 3, needs 4."""
    return JobSpec.from_dict(
        {
            "job_id": "j-reports",
            "coordinator": "hub",
            "model": "logreg",
            "shapes": [[8]],
            "rounds": rounds,
            "min_members": len(members) // 2 + 1,
            "members": list(members),
            "secure_aggregation": True,
            "threshold": len(members) // 2 + 1,
            "update_clip": 1.0,
            "phase_timeout_s": 10,
        }
    )


def _garbled(shares: list[EncryptedShare], to: Collection[str]) -> list[EncryptedShare]:
    """The same shares, those for ``to`` replaced by random bytes of the same length."""
    return [
        EncryptedShare(s.sender, s.receiver, os.urandom(len(s.ciphertext)))
        if s.receiver in to
        else s
        for s in shares
    ]


def _to_masked_input(
    coord: Coordinator, cheats: dict[str, Collection[str]] | None = None
) -> tuple[dict[str, SecAggClient], dict[str, BadShares]]:
    """Run the attempt's first two steps; each dealer in ``cheats`` deals garbage to the
    members named. The members whose inbox does not open are returned with what they
    found; the others have their masking ready."""
    cheats = cheats or {}
    rnd, attempt = coord.round, coord.attempt
    present = [m for m in coord.job.members if m not in coord.excluded]
    clients = {m: secagg_client(coord.job, m, rnd, attempt, SIGNING[m]) for m in present}
    for m, c in clients.items():
        coord.submit_advert(m, rnd, attempt, c.advertise(), VERIFY[m], 0.0)
    for m, c in clients.items():
        shares = _garbled(c.share_keys(coord.roster(m, rnd, attempt), VERIFY), cheats.get(m, ()))
        coord.submit_shares(m, rnd, attempt, shares, 0.0)
    assert coord.phase is Phase.MASKED_INPUT
    found: dict[str, BadShares] = {}
    for m in clients:
        try:
            masking = clients[m].masking(UPDATE, coord.inbox(m, rnd, attempt))
        except BadShares as exc:
            found[m] = exc
            continue
        clients[m]._masking = masking  # type: ignore[attr-defined]
    return clients, found


def _send_masked(coord: Coordinator, client: SecAggClient) -> None:
    masking = client._masking  # type: ignore[attr-defined]
    for _ in masking.blocks():
        pass
    coord.submit_masked(client.member, coord.round, coord.attempt, masking.result, 0.0)


def _finish(coord: Coordinator, clients: dict[str, SecAggClient], reports: dict[str, str]) -> None:
    """Reports first, then the masked inputs of the others and the rest of the attempt."""
    rnd, attempt = coord.round, coord.attempt
    for reporter, accused in reports.items():
        coord.submit_report(reporter, rnd, attempt, accused, 0.0)
    for m, c in clients.items():
        if m not in reports and coord.attempt == attempt:
            _send_masked(coord, c)
    if coord.attempt != attempt or coord.phase is not Phase.CONSISTENCY:
        return
    split = coord.unmask_request("a", rnd, attempt)
    for m in split.survivors:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), 0.0)
    request = coord.unmask_request("a", rnd, attempt)
    for m in request.survivors:
        if coord.phase is Phase.UNMASK and coord.attempt == attempt:
            coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), 0.0)


def _clean_attempt(coord: Coordinator) -> None:
    clients, found = _to_masked_input(coord)
    assert found == {}
    _finish(coord, clients, {})


def _start(members: tuple[str, ...] = SEVEN, rounds: int = 1) -> Coordinator:
    return Coordinator.start(_job(members, rounds=rounds), np.zeros(8, np.float32), 0.0)


def test_a_member_dealing_garbage_to_everyone_is_left_out_alone_and_the_job_goes_on() -> None:
    coord = _start()
    honest = ("a", "b", "c", "d", "e", "f")
    clients, found = _to_masked_input(coord, {"m": honest})
    # every honest member finds m's share unusable: none of them can mask
    assert tuple(found) == honest and {exc.member for exc in found.values()} == {"m"}
    assert "does not decrypt" in str(found["a"])
    _finish(coord, clients, {m: "m" for m in found})
    # the sixth report closed the phase (m's input alone is under the threshold)
    assert coord.attempt == 2 and coord.phase is Phase.ADVERTISE, coord.detail
    assert coord.excluded == frozenset({"m"}), coord.detail
    assert "a, b, c, d, e, f reported m's shares: m is left out" in coord.detail
    _clean_attempt(coord)
    assert coord.phase is Phase.DONE, coord.detail
    assert coord.history[-1].members == honest


def test_one_report_leaves_out_both_sides_and_the_round_still_aggregates() -> None:
    coord = _start(rounds=2)
    clients, found = _to_masked_input(coord, {"m": ("a",)})
    assert list(found) == ["a"] and found["a"].member == "m"
    _finish(coord, clients, {"a": "m"})
    # a dropped out of round 1 (its mask key is revealed: it sent no input); m's shares
    # to the others were good, so round 1 is summed without a
    assert coord.round == 2 and coord.history[0].members == ("b", "c", "d", "e", "f", "m")
    assert coord.excluded == frozenset({"a", "m"}), coord.detail
    assert "a reported m's shares: both are left out" in coord.detail
    _clean_attempt(coord)
    assert coord.phase is Phase.DONE, coord.detail
    assert coord.history[-1].members == ("b", "c", "d", "e", "f")


def test_a_false_report_costs_its_maker_its_seat() -> None:
    """m received good shares from a and claims otherwise: the coordinator cannot tell,
    so both leave; m cannot also send its masked input."""
    coord = _start(rounds=2)
    clients, found = _to_masked_input(coord)
    assert found == {}
    rnd, attempt = coord.round, coord.attempt
    coord.submit_report("m", rnd, attempt, "a", 0.0)
    with pytest.raises(UpdateRefused) as refused:
        _send_masked(coord, clients["m"])
    assert refused.value.reason is RefusalReason.DROPPED
    assert "m reported a's shares" in str(refused.value)
    with pytest.raises(UpdateRefused):  # the upload's header is refused the same way
        coord.expect("m", rnd, Phase.MASKED_INPUT, 0.0, attempt)
    _finish(coord, {k: v for k, v in clients.items() if k != "m"}, {})
    assert coord.history[0].members == ("a", "b", "c", "d", "e", "f")
    assert coord.excluded == frozenset({"a", "m"})
    _clean_attempt(coord)
    assert coord.history[-1].members == ("b", "c", "d", "e", "f")


def test_the_report_of_a_member_left_out_alone_is_not_believed() -> None:
    """m deals garbage to everyone and reports a as well: m's report costs a nothing."""
    coord = _start()
    clients, found = _to_masked_input(coord, {"m": ("a", "b", "c", "d", "e", "f")})
    _finish(coord, clients, {"m": "a", **{m: "m" for m in found}})
    assert coord.excluded == frozenset({"m"}), coord.detail
    assert "m reported a's" not in coord.detail
    _clean_attempt(coord)
    assert coord.phase is Phase.DONE


def test_reports_do_not_end_a_job_that_could_still_run() -> None:
    """Five members, threshold 3: a secure round needs 4, so leaving out a report's two
    sides would end the job. They stay, but the attempt is not aggregated (without the
    reporter the sum would be the one the accused chose): the next attempt runs."""
    coord = _start(FIVE, rounds=2)
    clients, _ = _to_masked_input(coord, {"m": ("a",)})
    _finish(coord, clients, {"a": "m"})
    assert coord.history == [] and coord.attempt == 2, coord.detail
    assert coord.excluded == frozenset() and coord.accused == frozenset({"m"})
    assert (
        "a reported m's shares: leaving both sides out would leave fewer than 4 members, "
        "so they stay"
    ) in coord.detail
    _clean_attempt(coord)
    assert coord.round == 2 and coord.history[0].members == FIVE, coord.detail


def test_a_job_left_with_too_few_members_fails_at_once_saying_why() -> None:
    coord = _start(FIVE)
    clients, found = _to_masked_input(coord, {"m": ("a", "b", "c", "d")})
    _finish(coord, clients, {m: "m" for m in found})
    assert coord.excluded == frozenset({"m"}) and coord.phase is Phase.ADVERTISE
    # then d turns out to deal garbage too: four members, one left out, three left
    clients, found = _to_masked_input(coord, {"d": ("a", "b", "c")})
    _finish(coord, clients, {m: "d" for m in found})
    assert coord.phase is Phase.FAILED, coord.detail
    assert coord.excluded == frozenset({"d", "m"})
    assert "a, b, c reported d's shares: d is left out" in coord.detail
    assert "3 members are left in the job, a secure round needs 4" in coord.detail


def test_reports_a_member_may_not_make() -> None:
    coord = _start()
    rnd, attempt = coord.round, coord.attempt
    with pytest.raises(UpdateRefused) as early:  # before the shares are out
        coord.submit_report("a", rnd, attempt, "m", 0.0)
    assert early.value.reason is RefusalReason.WRONG_PHASE
    clients, _ = _to_masked_input(coord)
    cases = {
        ("a", "a"): RefusalReason.WRONG_SHAPE,  # itself
        ("a", "zz"): RefusalReason.WRONG_SHAPE,  # nobody in the roster
        ("a", "x" * 100_000): RefusalReason.WRONG_SHAPE,  # not echoed back
        ("outsider", "m"): RefusalReason.NOT_A_MEMBER,
    }
    for (reporter, accused), reason in cases.items():
        with pytest.raises(UpdateRefused) as refused:
            coord.submit_report(reporter, rnd, attempt, accused, 0.0)
        assert refused.value.reason is reason, (reporter, accused, refused.value)
        assert len(str(refused.value)) < 200
    with pytest.raises(UpdateRefused) as stale:
        coord.submit_report("a", rnd, attempt + 1, "m", 0.0)
    assert stale.value.reason is RefusalReason.WRONG_ROUND
    coord.submit_report("a", rnd, attempt, "m", 0.0)
    with pytest.raises(UpdateRefused) as twice:
        coord.submit_report("a", rnd, attempt, "b", 0.0)
    assert twice.value.reason is RefusalReason.DUPLICATE
    _send_masked(coord, clients["b"])
    with pytest.raises(UpdateRefused) as after_input:
        coord.submit_report("b", rnd, attempt, "m", 0.0)
    assert after_input.value.reason is RefusalReason.DUPLICATE
    assert coord.excluded == frozenset() and coord.attempt == attempt
