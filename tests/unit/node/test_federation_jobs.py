"""The coordinator's jobs service without a server: admission, upload claims, proofs, statuses.

The integration tests drive these paths over gRPC; here each refusal is pinned to its
error and, through the servicer's one table, to the gRPC status members see.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.errors import (
    BadShares,
    FederationError,
    InconsistentView,
    RefusalReason,
    RosterRefused,
    SecAggAbort,
    SecAggError,
    UpdateRefused,
)
from qdspace.federation.host import JobExists, UnknownJob
from qdspace.federation.job import JobSpec
from qdspace.federation.params import params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.ledger.errors import ChainUnavailable, NotAnchored, UnknownLeaf
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.federation_service import status_code_of
from qdspace.node.runtime.federation_jobs import (
    FederationJobs,
    NoChain,
    NotOperator,
    ProofPending,
    ProofSource,
    UnknownVersion,
)
from qdspace.node.runtime.federation_slots import RoundRef

SHAPES = logreg.model_shapes(4, 2)
KEY = SigningKey(bytes(range(32)))
Code = grpc.StatusCode


def identity(name: str) -> MemberIdentity:
    return MemberIdentity(
        member_id=f"id-{name}",
        name=name,
        role="supplier",
        verify_key=bytes(32),
        serial=1,
        not_after=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
        fingerprint=f"fp-{name}",
    )


SUNARC, CELLEX, MALLORY = identity("sunarc"), identity("cellex"), identity("mallory")


async def started(root: Path, proofs: ProofSource | None = None) -> FederationJobs:
    jobs = FederationJobs(SUNARC, KEY, root, clock=lambda: 0.0, proofs=proofs)
    job = JobSpec(
        job_id="el-1",
        coordinator="sunarc",
        model="logreg",
        shapes=SHAPES,
        rounds=2,
        min_members=2,
        members=("cellex", "polycell"),
        phase_timeout_s=10.0,
    )
    initial = params_to_bytes(logreg.init_params(4, 2))
    await jobs.start(jobs.proposed(job.canonical_bytes()), memoryview(initial), "sunarc")
    return jobs


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpdateRefused(RefusalReason.NOT_A_MEMBER, "x"), Code.PERMISSION_DENIED),
        (UpdateRefused(RefusalReason.NO_AGREEMENT, "x"), Code.PERMISSION_DENIED),
        (UpdateRefused(RefusalReason.BAD_SIGNATURE, "x"), Code.PERMISSION_DENIED),
        (UpdateRefused(RefusalReason.WRONG_SHAPE, "x"), Code.INVALID_ARGUMENT),
        (UpdateRefused(RefusalReason.NOT_FINITE, "x"), Code.INVALID_ARGUMENT),
        (UpdateRefused(RefusalReason.DUPLICATE, "x"), Code.ALREADY_EXISTS),
        (UpdateRefused(RefusalReason.WRONG_JOB, "x"), Code.NOT_FOUND),
        (UpdateRefused(RefusalReason.BUSY, "x"), Code.RESOURCE_EXHAUSTED),
        (UpdateRefused(RefusalReason.OUT_OF_RANGE, "x"), Code.INVALID_ARGUMENT),
        (UpdateRefused(RefusalReason.WRONG_PHASE, "x"), Code.FAILED_PRECONDITION),
        (UpdateRefused(RefusalReason.DEADLINE_PASSED, "x"), Code.FAILED_PRECONDITION),
        (UnknownJob("x"), Code.NOT_FOUND),
        (JobExists("x"), Code.ALREADY_EXISTS),
        (RosterRefused("x"), Code.PERMISSION_DENIED),
        (SecAggAbort("x"), Code.ABORTED),
        (InconsistentView("x"), Code.ABORTED),
        (BadShares("m1", "x"), Code.ABORTED),
        (SecAggError("x"), Code.INVALID_ARGUMENT),
        (FederationError("x"), Code.INVALID_ARGUMENT),
        (NotOperator("x"), Code.PERMISSION_DENIED),
        (UnknownVersion("x"), Code.NOT_FOUND),
        (NoChain("x"), Code.FAILED_PRECONDITION),
        (ProofPending("x"), Code.UNAVAILABLE),
    ],
)
def test_each_error_has_one_status(error: FederationError, code: grpc.StatusCode) -> None:
    assert status_code_of(error) is code


async def test_only_members_with_a_known_job_are_admitted(tmp_path: Path) -> None:
    jobs = await started(tmp_path)
    assert (await jobs.job("el-1", CELLEX)).job_id == "el-1"
    assert (await jobs.job("el-1", SUNARC)).job_id == "el-1"  # the coordinator itself
    with pytest.raises(UpdateRefused, match="mallory is not a member of job el-1") as refused:
        await jobs.job("el-1", MALLORY)
    assert refused.value.reason is RefusalReason.NOT_A_MEMBER
    with pytest.raises(UnknownJob, match="no job 'el-2' on sunarc"):
        await jobs.job("el-2", CELLEX)
    assert [v.job_id for v in await jobs.jobs_of("cellex")] == ["el-1"]
    assert await jobs.jobs_of("mallory") == []


async def test_only_the_operator_starts_jobs_and_only_new_ones(tmp_path: Path) -> None:
    jobs = await started(tmp_path)
    jobs.check_operator(SUNARC)
    with pytest.raises(NotOperator, match="only sunarc's own operator may start jobs"):
        jobs.check_operator(CELLEX)
    terms = (await jobs.job("el-1", SUNARC)).canonical_bytes()
    with pytest.raises(JobExists, match="job el-1 already exists on sunarc"):
        jobs.proposed(terms)
    with pytest.raises(FederationError, match="job terms are not JSON"):
        jobs.proposed(b"{")


async def test_one_upload_stream_per_member_and_job(tmp_path: Path) -> None:
    jobs = await started(tmp_path)
    ref = RoundRef("el-1", 1, 1)
    size = len(params_to_bytes(logreg.init_params(4, 2)))
    async with jobs.upload(ref, CELLEX, Phase.TRAINING, size) as upload:
        assert upload.limit == size
        with pytest.raises(UpdateRefused, match="already has an upload in flight") as busy:
            async with jobs.upload(ref, CELLEX, Phase.TRAINING, size):
                pass  # pragma: no cover
        assert busy.value.reason is RefusalReason.BUSY
    async with jobs.upload(ref, CELLEX, Phase.TRAINING, size):
        pass  # the claim ended with the first stream
    with pytest.raises(UpdateRefused):
        async with jobs.upload(ref, CELLEX, Phase.TRAINING, size + 1):
            pass  # pragma: no cover
    async with jobs.upload(ref, CELLEX, Phase.TRAINING, size):
        pass  # a claim refused on its header is released too


@pytest.mark.parametrize(
    ("raised", "error", "message"),
    [
        (NotAnchored("batch 3"), ProofPending, "not anchored yet: batch 3"),
        (UnknownLeaf("no leaf"), UnknownVersion, "el-1/v0 was never anchored: no leaf"),
        (ChainUnavailable("down"), ProofPending, "ledger: down"),
        (FederationError("no ledger.json"), NoChain, "no ledger.json"),
    ],
)
async def test_ledger_failures_become_proof_errors(
    tmp_path: Path, raised: Exception, error: type[FederationError], message: str
) -> None:
    def proofs(kind: str, ref: str) -> str:
        raise raised

    jobs = await started(tmp_path, proofs)
    with pytest.raises(error) as caught:
        await jobs.version_proof("el-1", CELLEX, 0)
    assert str(caught.value) == message


async def test_proofs_of_versions_that_exist_on_a_node_with_a_chain(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def proofs(kind: str, ref: str) -> str:
        asked.append((kind, ref))
        return "{}"

    jobs = await started(tmp_path / "a", proofs)
    assert await jobs.version_proof("el-1", CELLEX, 0) == "{}"
    assert [ref for _, ref in asked] == ["el-1/v0"]
    with pytest.raises(UnknownVersion, match="job el-1 has no version 1"):
        await jobs.version_proof("el-1", CELLEX, 1)
    chainless = await started(tmp_path / "b")
    with pytest.raises(NoChain, match="sunarc anchors to no chain"):
        await chainless.version_proof("el-1", CELLEX, 0)
