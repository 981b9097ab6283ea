"""A job's rounds and its status are bounded; a phase nobody knows is a protocol error.

Before: ``rounds`` had no ceiling but the message cap, every status (every member's
every poll) carried the job's whole history, and a status naming an unknown phase was
a bare ``ValueError("'x' is not a valid Phase")`` from deep in the wire codec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.host import JobHost
from qdspace.federation.job import MAX_ROUNDS, JobSpec, JobSpecError
from qdspace.federation.params import params_to_bytes
from qdspace.federation.round_status import STATUS_HISTORY, Phase, StatusView
from qdspace.node.rpc.federation_serde import status_from_proto, status_to_proto

from .conftest import logreg_job

SHAPES = logreg.model_shapes(4, 2)
MEMBERS = ("cellex", "polycell")
KEY = SigningKey(bytes(range(32)))


def test_terms_name_at_most_max_rounds() -> None:
    assert logreg_job(SHAPES, MEMBERS, rounds=MAX_ROUNDS).rounds == 10_000
    with pytest.raises(JobSpecError, match=r"rounds must be in 1..10,000 .*got 10,001"):
        logreg_job(SHAPES, MEMBERS, rounds=MAX_ROUNDS + 1)
    terms = logreg_job(SHAPES, MEMBERS).to_dict() | {"rounds": 2**40}
    with pytest.raises(JobSpecError, match=r"got 1,099,511,627,776"):
        JobSpec.from_dict(terms)


def test_a_status_carries_the_last_rounds_and_the_count(tmp_path: Path) -> None:
    """120 aggregated rounds: a status carries the last ``STATUS_HISTORY`` of them, and
    its version still counts them all; the coordinator keeps the whole history."""
    rounds = STATUS_HISTORY + 20
    host = JobHost.create(
        tmp_path,
        logreg_job(SHAPES, MEMBERS, rounds=rounds + 5),
        logreg.init_params(4, 2),
        KEY,
        now=0.0,
    )
    update = params_to_bytes([np.full(s, 0.5, np.float32) for s in SHAPES])
    for r in range(1, rounds + 1):
        for m in MEMBERS:
            host.submit_update(m, r, update, 10, now=float(r))
    view = host.view(now=float(rounds))
    assert len(host.history) == view.version == rounds
    assert len(view.history) == STATUS_HISTORY
    assert view.history == tuple(host.history[-STATUS_HISTORY:])
    assert view.history[-1].round == rounds
    assert len(status_to_proto(view).history) == STATUS_HISTORY  # what every poll carries


def _wire(**fields: object) -> object:
    view = StatusView("el-1", 1, 1, Phase.TRAINING, 1.0, 0, "", 3, (), b"")
    wire = status_to_proto(view)
    for name, value in fields.items():
        setattr(wire, name, value)
    return wire


@pytest.mark.parametrize("phase", ["bogus", "", "DONE", "x" * 5000])
def test_an_unknown_phase_is_a_protocol_error_naming_field_and_value(phase: str) -> None:
    with pytest.raises(UpdateRefused) as refused:
        status_from_proto(_wire(phase=phase))  # type: ignore[arg-type]
    assert refused.value.reason is RefusalReason.OUT_OF_RANGE
    message = str(refused.value)
    assert f"status field phase has the unknown value {phase[:40]!r}" in message
    assert "known: training, advertise" in message and len(message) < 300


def test_a_status_past_the_rounds_ceiling_or_with_more_history_than_rounds_is_refused() -> None:
    with pytest.raises(UpdateRefused, match="rounds 10001 \\(at most 10,000\\)"):
        status_from_proto(_wire(rounds=MAX_ROUNDS + 1))  # type: ignore[arg-type]
    wire = _wire(rounds=1)
    for r in (1, 2):
        wire.history.add(round=r, version=r)  # type: ignore[attr-defined]
    with pytest.raises(UpdateRefused, match="2 history records for a job of 1 rounds"):
        status_from_proto(wire)  # type: ignore[arg-type]
