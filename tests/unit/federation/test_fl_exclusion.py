"""A member the coordinator finds at fault is left out of the job's later attempts.

M deals key shares of another seed than the one it committed to, correctly signed: the
honest members take them, and only the coordinator's unmasking finds that they do not
rebuild M's commitment (`BadShares` names M). Before, every attempt reopened with M in
the roster and M could make each one abort until the job failed; now the next attempt
runs without M, and the exclusion survives a restart of the coordinator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation.errors import UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator

MEMBERS = ("a", "b", "c", "d", "m")
SIGNING = {m: SigningKey.generate() for m in MEMBERS}
VERIFY = {m: k.verify_key for m, k in SIGNING.items()}


def _job() -> JobSpec:
    return JobSpec.from_dict(
        {
            "job_id": "j1",
            "coordinator": "hub",
            "model": "logreg",
            "shapes": [[8]],
            "rounds": 1,
            "min_members": 4,
            "members": list(MEMBERS),
            "secure_aggregation": True,
            "threshold": 3,
            "update_clip": 1.0,
            "phase_timeout_s": 10,
        }
    )


def _attempt(coord: Coordinator, now: float, cheat: bool) -> None:
    rnd, attempt = coord.round, coord.attempt
    present = [m for m in MEMBERS if m not in coord.excluded]
    clients = {m: secagg_client(coord.job, m, rnd, attempt, SIGNING[m]) for m in present}
    for m, c in clients.items():
        coord.submit_advert(m, rnd, attempt, c.advertise(), VERIFY[m], now)
    if cheat:  # committed to one seed, deals shares of another
        clients["m"]._seed = bytes(32)
    for m, c in clients.items():
        coord.submit_shares(
            m, rnd, attempt, c.share_keys(coord.roster(m, rnd, attempt), VERIFY), now
        )
    for m, c in clients.items():
        masked = c.mask(np.full(8, 0.01, np.float32), coord.inbox(m, rnd, attempt))
        coord.submit_masked(m, rnd, attempt, masked, now)
    split = coord.unmask_request("a", rnd, attempt)
    for m in split.survivors:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), now)
    request = coord.unmask_request("a", rnd, attempt)
    for m in request.survivors:
        if coord.phase is Phase.UNMASK and coord.attempt == attempt:
            coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), now)


def test_a_member_found_at_fault_is_left_out_of_later_attempts(tmp_path: Path) -> None:
    coord = Coordinator.start(_job(), np.zeros(8, np.float32), 0.0)
    _attempt(coord, 0.0, cheat=True)
    assert coord.excluded == frozenset({"m"}) and coord.attempt == 2, coord.detail
    assert "m is left out" in coord.detail
    with pytest.raises(UpdateRefused):  # its advert is no longer taken
        client = secagg_client(coord.job, "m", coord.round, coord.attempt, SIGNING["m"])
        coord.submit_advert("m", coord.round, coord.attempt, client.advertise(), VERIFY["m"], 1.0)
    path = tmp_path / "coordinator.ckpt"
    coord.checkpoint(path)
    resumed = Coordinator.resume(path, _job(), 1.0)
    assert resumed.excluded == frozenset({"m"})
    _attempt(resumed, 1.0, cheat=False)
    assert resumed.phase is Phase.DONE, resumed.detail
    assert resumed.history[-1].members == ("a", "b", "c", "d")
