"""A job's min_members must reach its strategy's floor (Krum's ``2f + 3`` updates).

Before, the terms did not compare them: five members, ``min_members`` 2, Krum with
``f = 1`` (5 updates needed) and one member silent closed the round with four updates,
Krum refused them (``StrategyError``), nothing caught it, and every later call of every
member raised it: the job stayed in ``TRAINING`` for good. Now such terms are refused,
and a round with fewer updates than the strategy needs is tried again.
"""

from __future__ import annotations

import numpy as np
import pytest

from qdspace.federation.errors import FederationError
from qdspace.federation.job import JobSpec
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.strategies import StrategyName, StrategySpec

MEMBERS = ("a", "b", "c", "d", "e")
KRUM = StrategySpec(StrategyName.KRUM, {"byzantine": 1.0})


def _job(min_members: int) -> JobSpec:
    return JobSpec(
        job_id="j-krum",
        coordinator="a",
        model="logreg",
        shapes=((4,),),
        rounds=2,
        min_members=min_members,
        members=MEMBERS,
        phase_timeout_s=10.0,
        strategy=KRUM,
    )


@pytest.mark.parametrize("min_members", [1, 2, 4])
def test_terms_under_the_strategys_floor_are_refused_saying_why(min_members: int) -> None:
    with pytest.raises(FederationError) as refused:
        _job(min_members)
    assert (
        f"min_members {min_members} is under the 5 updates strategy krum needs to aggregate a round"
    ) in str(refused.value)


def test_a_round_short_of_the_strategys_floor_is_tried_again_and_every_call_answers() -> None:
    coord = Coordinator.start(_job(5), np.zeros(4, np.float32), 0.0)
    for m in ("a", "b", "c", "d"):  # e never sends
        coord.submit_update(m, 1, [np.ones(4, np.float32)], 1, 1.0)
    assert coord.tick(11.0) and coord.attempt == 2 and coord.phase is Phase.TRAINING
    assert "4 updates by the deadline, too few: the job needs 5" in coord.detail
    for now in (22.0, 33.0):
        coord.tick(now)
    assert coord.phase is Phase.FAILED and coord.history == [], coord.detail
