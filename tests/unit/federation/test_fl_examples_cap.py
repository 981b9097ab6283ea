"""The job term ``max_examples_per_member``: no member claims most of a FedAvg's weight.

A plain update carries the number of examples it was trained on, its weight in a
weighted FedAvg. Without a cap below ``MAX_EXAMPLES`` one member claiming 10**12
examples takes nearly all of the weight; with the term set, the coordinator refuses
an update that claims more, as it refuses any other bad update.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.host import JobHost
from qdspace.federation.job import JobSpec, JobSpecError
from qdspace.federation.params import params_to_bytes

from .conftest import logreg_job

SHAPES = logreg.model_shapes(4, 2)
MEMBERS = ("cellex", "polycell")
KEY = SigningKey(bytes(range(32)))
#: the limit of every job, whatever its terms
MAX_EXAMPLES = 10**12


def trained(value: float) -> bytes:
    return params_to_bytes([np.full(s, value, np.float32) for s in SHAPES])


def test_an_update_claiming_more_than_the_term_is_refused(tmp_path: Path) -> None:
    job = logreg_job(SHAPES, MEMBERS, max_examples_per_member=1000)
    host = JobHost.create(tmp_path, job, logreg.init_params(4, 2), KEY, now=0.0)
    with pytest.raises(UpdateRefused, match="max_examples_per_member") as exc:
        host.submit_update("cellex", 1, trained(9.0), 10**12, now=1.0)
    assert exc.value.reason is RefusalReason.OUT_OF_RANGE
    assert "cellex claims 1000000000000 examples, the limit is 1000" in str(exc.value)
    host.submit_update("cellex", 1, trained(1.0), 1000, now=1.0)  # at the cap: taken
    host.submit_update("polycell", 1, trained(3.0), 1000, now=1.0)
    assert host.latest.version.version == 1
    assert host.latest.version.members == MEMBERS


def test_without_the_term_the_old_limit_holds(tmp_path: Path) -> None:
    host = JobHost.create(tmp_path, logreg_job(SHAPES, MEMBERS), logreg.init_params(4, 2), KEY, 0.0)
    with pytest.raises(UpdateRefused, match=f"the limit is {MAX_EXAMPLES}$") as exc:
        host.submit_update("cellex", 1, trained(1.0), MAX_EXAMPLES + 1, now=1.0)
    assert exc.value.reason is RefusalReason.OUT_OF_RANGE
    host.submit_update("cellex", 1, trained(1.0), MAX_EXAMPLES, now=1.0)


def test_the_term_is_part_of_the_terms_and_their_digest() -> None:
    plain = logreg_job(SHAPES, MEMBERS)
    capped = logreg_job(SHAPES, MEMBERS, max_examples_per_member=500)
    assert "max_examples_per_member" not in plain.to_dict()  # old digests are unchanged
    assert capped.to_dict()["max_examples_per_member"] == 500
    assert capped.digest() != plain.digest()
    assert JobSpec.from_dict(capped.to_dict()) == capped
    assert JobSpec.from_dict(capped.to_dict()).digest() == capped.digest()


@pytest.mark.parametrize("bad", [0, -1, MAX_EXAMPLES + 1, 2.5, 1000.0, "7", True])
def test_the_term_must_be_a_whole_number_in_range(bad: object) -> None:
    terms = logreg_job(SHAPES, MEMBERS).to_dict() | {"max_examples_per_member": bad}
    with pytest.raises(JobSpecError, match="max_examples_per_member must be a whole number"):
        JobSpec.from_dict(terms)
