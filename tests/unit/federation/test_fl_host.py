"""A job on its coordinator: signed version chain, anchor hook, upload checks, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.errors import FederationError, RefusalReason, UpdateRefused, VersionError
from qdspace.federation.host import JobExists, JobHost, load_jobs
from qdspace.federation.job import JobSpec
from qdspace.federation.params import encoded_size, params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.federation.versions import LEDGER_KIND, verify_version

from .conftest import logreg_job

SHAPES = logreg.model_shapes(4, 2)
MEMBERS = ("cellex", "polycell")
KEY = SigningKey(bytes(range(32)))
INITIAL = logreg.init_params(4, 2)


def job(**overrides: object) -> JobSpec:
    return logreg_job(SHAPES, MEMBERS, **overrides)


def trained(value: float) -> bytes:
    return params_to_bytes([np.full(s, value, np.float32) for s in SHAPES])


def test_versions_form_a_signed_anchored_chain(tmp_path: Path) -> None:
    anchored: list[tuple[str, str, bytes]] = []
    host = JobHost.create(
        tmp_path, job(), INITIAL, KEY, now=0.0, anchor=lambda *a: anchored.append(a)
    )
    v0 = host.latest
    assert v0.version.version == 0 and v0.version.members == ()
    for m, value in zip(MEMBERS, (1.0, 3.0), strict=True):
        host.submit_update(m, 1, trained(value), 10, now=1.0)
    v1 = host.latest
    assert v1.version.version == 1 and v1.version.members == MEMBERS
    params = [np.full(s, 2.0, np.float32) for s in SHAPES]  # FedAvg of 1 and 3
    checked = verify_version(
        v1.signed,
        KEY.verify_key,
        params,
        job_id="el-1",
        job_digest=job().digest(),
        parent=v0.version,
        anchored=lambda kind, ref, record: (kind, ref, record) in anchored,
    )
    assert checked.round == 1
    assert [(k, r) for k, r, _ in anchored] == [(LEDGER_KIND, "el-1/v0"), (LEDGER_KIND, "el-1/v1")]
    with pytest.raises(VersionError, match="not signed"):
        verify_version(
            v1.signed,
            SigningKey.generate().verify_key,
            params,
            job_id="el-1",
            job_digest=job().digest(),
        )
    with pytest.raises(UpdateRefused, match="serves version 1"):
        host.model(0)


def test_uploads_are_refused_on_their_header(tmp_path: Path) -> None:
    host = JobHost.create(tmp_path, job(), INITIAL, KEY, now=0.0)
    size = encoded_size(SHAPES)
    assert host.upload_size(Phase.TRAINING) == size == len(trained(0.0))

    def reason(member: str, round_: int, total: int) -> RefusalReason:
        with pytest.raises(UpdateRefused) as exc:
            host.expect_upload(member, round_, Phase.TRAINING, 1.0, attempt=None, total_bytes=total)
        return exc.value.reason

    assert reason("mallory", 1, size) is RefusalReason.NOT_A_MEMBER
    assert reason("cellex", 3, size) is RefusalReason.WRONG_ROUND
    assert reason("cellex", 1, size + 4) is RefusalReason.WRONG_SHAPE
    host.expect_upload("cellex", 1, Phase.TRAINING, 1.0, attempt=None, total_bytes=size)
    with pytest.raises(UpdateRefused) as exc:
        host.submit_update("cellex", 1, b"QDFP1\n junk", 10, now=1.0)
    assert exc.value.reason is RefusalReason.WRONG_SHAPE
    with pytest.raises(JobExists):
        JobHost.create(tmp_path, job(), INITIAL, KEY, now=0.0)
    with pytest.raises(FederationError, match="job id"):
        JobHost.create(tmp_path, job(job_id="../escape"), INITIAL, KEY, now=0.0)
    with pytest.raises(FederationError, match="initial model"):
        JobHost.create(tmp_path, job(job_id="el-2"), INITIAL[:1], KEY, now=0.0)


def test_a_restarted_coordinator_resumes_its_jobs(tmp_path: Path) -> None:
    host = JobHost.create(tmp_path, job(), INITIAL, KEY, now=0.0)
    for m in MEMBERS:
        host.submit_update(m, 1, trained(1.0), 10, now=1.0)
    host.submit_update("cellex", 2, trained(5.0), 10, now=2.0)  # lost with the process
    (tmp_path / "not-a-job").mkdir()
    jobs = load_jobs(tmp_path, KEY, now=100.0)
    assert list(jobs) == ["el-1"]
    resumed = jobs["el-1"]
    view = resumed.view(100.0)
    # round 2 reopens as a fresh attempt (2): a number in use before the restart is not reused
    assert (view.round, view.attempt, view.version, view.phase) == (2, 2, 1, Phase.TRAINING)
    assert view.deadline_in_s == pytest.approx(10.0)
    assert resumed.latest.signed == host.latest.signed
    for m in MEMBERS:
        resumed.submit_update(m, 2, trained(3.0), 10, now=101.0)
    assert resumed.view(101.0).phase is Phase.DONE
    assert resumed.latest.version.parent_digest == host.latest.version.digest()
    again = JobHost.load(tmp_path / "el-1", KEY, now=200.0)
    assert again.view(200.0).finished and again.latest.version.version == 2
