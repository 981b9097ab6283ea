"""A member name reissued to another member takes no place in a running job.

The authority may free a name when its holder leaves and issue it to a newcomer (another
key, another member id). The coordinator pins each name to the member id of its first
accepted call for the job, keeps the pin across a restart, and refuses the newcomer
(PERMISSION_DENIED for the member, through the servicer's one table).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import pytest

from qdspace.federation import logreg
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.member_pins import PINS_FILE
from qdspace.federation.params import params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.node.rpc.federation_service import status_code_of
from qdspace.node.runtime.federation_jobs import FederationJobs
from qdspace.node.runtime.federation_slots import RoundRef

from .test_federation_jobs import CELLEX, KEY, SUNARC, started

#: The name ``cellex`` as the authority issued it again, to another member with another key.
NEW_CELLEX = dataclasses.replace(
    CELLEX,
    member_id="id-of-the-new-cellex-holder",
    verify_key=bytes(range(32)),
    serial=2,
    fingerprint="fp-new-cellex",
)


def refused(exc: pytest.ExceptionInfo[UpdateRefused]) -> str:
    assert exc.value.reason is RefusalReason.NOT_A_MEMBER
    assert status_code_of(exc.value) is grpc.StatusCode.PERMISSION_DENIED
    return str(exc.value)


async def test_a_reissued_name_is_refused_once_its_first_holder_called(tmp_path: Path) -> None:
    jobs = await started(tmp_path)
    assert (await jobs.job("el-1", CELLEX)).job_id == "el-1"  # pins cellex to id-cellex
    with pytest.raises(UpdateRefused) as exc:
        await jobs.job("el-1", NEW_CELLEX)
    message = refused(exc)
    assert "cellex" in message and "id-cellex" in message and "id-of-the-ne" in message
    with pytest.raises(UpdateRefused) as exc:  # nor may it download the model
        await jobs.model("el-1", NEW_CELLEX, 0, lambda published: ())
    refused(exc)
    size = len(params_to_bytes(logreg.init_params(4, 2)))
    with pytest.raises(UpdateRefused) as exc:  # nor send an update
        async with jobs.upload(RoundRef("el-1", 1, 1), NEW_CELLEX, Phase.TRAINING, size):
            pass  # pragma: no cover
    refused(exc)
    assert await jobs.jobs_of("cellex", member_id=NEW_CELLEX.member_id) == []
    assert [v.job_id for v in await jobs.jobs_of("cellex", member_id=CELLEX.member_id)] == ["el-1"]
    assert (await jobs.job("el-1", CELLEX)).job_id == "el-1"  # the first holder stays


async def test_the_pin_survives_a_restart_of_the_coordinator(tmp_path: Path) -> None:
    jobs = await started(tmp_path)
    await jobs.job("el-1", CELLEX)
    pins = json.loads((tmp_path / "el-1" / PINS_FILE).read_text())
    assert pins == {"cellex": "id-cellex"}
    restarted = FederationJobs(SUNARC, KEY, tmp_path, clock=lambda: 0.0)
    with pytest.raises(UpdateRefused) as exc:
        await restarted.job("el-1", NEW_CELLEX)
    refused(exc)
    assert (await restarted.job("el-1", CELLEX)).job_id == "el-1"


async def test_whoever_calls_first_holds_the_name(tmp_path: Path) -> None:
    """Before any call the name is free: its holder at that time is pinned, whoever it is."""
    jobs = await started(tmp_path)
    assert (await jobs.job("el-1", NEW_CELLEX)).job_id == "el-1"
    with pytest.raises(UpdateRefused) as exc:
        await jobs.job("el-1", CELLEX)
    refused(exc)
