"""The federation routes of the operator API against a hostile caller, on real node processes.

A member's node runs its side of a federated job; its operator starts jobs and joins
them through ``/v1/federation``. Whatever the caller sends -- unknown job or session
ids, absurd, negative or non-finite numbers, terms the coordinator cannot run, a node
in the wrong role, the same job joined twice -- the answer is a 4xx problem naming
what was wrong, never a 5xx, and the node goes on serving.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from qdspace.federation import logreg
from qdspace.federation.job import JobSpec
from qdspace.federation.params import params_to_bytes
from qdspace.node.localnet.network import LocalNetwork

from .test_api_boundaries import problem

pytestmark = pytest.mark.integration

COORDINATOR = "sunarc"
DIMS, CLASSES = 6, 2
SHAPES = logreg.model_shapes(DIMS, CLASSES)
JOBS = "/v1/federation/jobs"
SESSIONS = "/v1/federation/sessions"


def terms(job_id: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": COORDINATOR,
        "model": "logreg",
        "shapes": SHAPES,
        "rounds": 1,
        "min_members": 1,
        "members": ("cellex", "sunarc"),
        "phase_timeout_s": 2.0,
    }
    spec.update(overrides)
    return JobSpec(**spec).to_dict()


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = logreg.make_blobs(200, DIMS, CLASSES, seed=3)
    path = tmp_path_factory.mktemp("fl-api") / "shard.npz"
    logreg.save_dataset(path, data)
    return path


def start(client: httpx.Client, spec: dict[str, Any], **body: Any) -> httpx.Response:
    return client.post(JOBS, json={"terms": spec, **body})


def test_a_job_started_joined_and_followed_through_the_api(
    network: LocalNetwork, shard: Path
) -> None:
    job_id = fresh_id("api-job")
    with network[COORDINATOR].client() as sunarc, network["cellex"].client() as cellex:
        started = start(sunarc, terms(job_id))
        assert started.status_code == 200, started.text
        assert started.json()["round"] == 1 and started.json()["version"] == 0
        listed = cellex.get(JOBS, params={"coordinator": COORDINATOR})
        assert job_id in [j["job_id"] for j in listed.json()]
        joined = cellex.post(
            SESSIONS,
            json={"job_id": job_id, "coordinator": COORDINATOR, "data": str(shard), "poll_s": 0.5},
        )
        assert joined.status_code == 202, joined.text
        session_id = joined.json()["session_id"]
        # joining twice while the first session runs is a conflict
        again = cellex.post(
            SESSIONS, json={"job_id": job_id, "coordinator": COORDINATOR, "data": str(shard)}
        )
        assert session_id in problem(again, 409)["detail"]
        deadline = time.monotonic() + 60
        while (s := cellex.get(f"{SESSIONS}/{session_id}").json())["state"] == "running":
            assert time.monotonic() < deadline, s
            time.sleep(0.5)
        assert s["state"] == "done", s
        assert s["status"]["phase"] == "done" and s["contributed"] == [1]
        assert s["versions"] == [0, 1]
        kinds = [e["kind"] for e in s["events"]]
        assert kinds[:2] == ["model", "version"] and kinds[-1] == "done"
        later = cellex.get(f"{SESSIONS}/{session_id}", params={"after": 2}).json()
        assert later["events_from"] == 2 and later["events"] == s["events"][2:]
        status = cellex.get(f"{JOBS}/{job_id}", params={"coordinator": COORDINATOR}).json()
        assert status["finished"] and status["history"][0]["members"] == ["cellex"]
        # the coordinator timed the round for its operator's monitoring
        metrics = sunarc.get("/metrics").text
        (count,) = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("qdspace_federation_round_seconds_count")
        ]
        assert count >= 1


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        (f"{JOBS}/x", {"wait_s": "NaN"}, "query.wait_s"),
        (f"{JOBS}/x", {"wait_s": "-1"}, "query.wait_s"),
        (f"{JOBS}/x", {"wait_s": "1e12"}, "query.wait_s"),
        (f"{JOBS}/x", {"round": str(10**20)}, "query.round"),
        (f"{JOBS}/x", {"version": "-5"}, "query.version"),
        (f"{JOBS}/x", {"phase": "sleeping"}, "query.phase"),
        (JOBS, {"coordinator": ""}, "query.coordinator"),
        (f"{SESSIONS}/x", {"after": "-1"}, "query.after"),
        (f"{SESSIONS}/x", {"after": "Infinity"}, "query.after"),
    ],
)
def test_absurd_query_numbers_are_422_naming_the_field(
    network: LocalNetwork, path: str, params: dict[str, str], field: str
) -> None:
    with network["cellex"].client() as client:
        body = problem(client.get(path, params=params), 422)
    assert field in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"job_id": "j", "data": "/x.npz", "poll_s": NaN}', "body.poll_s"),
        (b'{"job_id": "j", "data": "/x.npz", "poll_s": -1}', "body.poll_s"),
        (b'{"job_id": "j", "data": "/x.npz", "poll_s": 1e308}', "body.poll_s"),
        (b'{"job_id": "j", "data": "/x.npz", "image_size": -96}', "body.image_size"),
        (b'{"job_id": "j", "data": "/x.npz", "image_size": 1e12}', "body.image_size"),
        (b'{"job_id": "", "data": "/x.npz"}', "body.job_id"),
        (b'{"job_id": "j\\u0000", "data": "/x.npz"}', "body.job_id"),
        (b'{"job_id": "j", "data": ""}', "body.data"),
        (b'{"job_id": "j", "data": "/x\\u0000.npz"}', "body.data"),
        (b'{"job_id": "j"}', "body.data"),
    ],
)
def test_absurd_join_requests_are_422_naming_the_field(
    network: LocalNetwork, raw: bytes, field: str
) -> None:
    with network["cellex"].client() as client:
        response = client.post(SESSIONS, content=raw, headers={"content-type": "application/json"})
        body = problem(response, 422)
    assert field in [e["field"] for e in body["errors"]], body


def test_unknown_ids_are_404_problems(network: LocalNetwork, shard: Path) -> None:
    with network["cellex"].client() as client:
        problem(client.get(f"{SESSIONS}/no-such-session"), 404)
        problem(client.get(f"{JOBS}/no-such-job", params={"coordinator": COORDINATOR}), 404)
        joined = client.post(
            SESSIONS, json={"job_id": "no-such-job", "coordinator": COORDINATOR, "data": str(shard)}
        )
        assert "no-such-job" in problem(joined, 404)["detail"]
        nobody = client.get(JOBS, params={"coordinator": "nobody"})
        assert "unknown coordinator 'nobody'" in problem(nobody, 404)["detail"]
        assert client.get("/healthz").status_code == 200


def _bad_terms(job_id: str) -> list[tuple[Any, str]]:
    ok = terms(job_id)
    return [
        ({**ok, "rounds": 10**12}, "rounds must be in"),
        ({**ok, "rounds": -3}, "rounds must be >= 1"),
        ({**ok, "shapes": [[1e308]]}, "shapes[0][0] must be a whole number"),
        ({**ok, "shapes": [[-6, 2], [2]]}, ""),
        ({**ok, "shapes": [[100_000, 100_000]]}, "a job may have at most"),
        ({**ok, "phase_timeout_s": float("nan")}, "phase_timeout_s must be a finite number"),
        ({**ok, "training": {"lr": float("inf")}}, "finite"),
        ({k: v for k, v in ok.items() if k != "members"}, "members"),
        ({**ok, "members": "cellex"}, ""),
    ]


def test_terms_the_coordinator_cannot_run_are_4xx(network: LocalNetwork) -> None:
    with network[COORDINATOR].client() as client:
        for spec, says in _bad_terms(fresh_id("bad-terms")):
            raw = json.dumps({"terms": spec}).encode()  # NaN and Infinity as such
            response = client.post(JOBS, content=raw, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (spec, response.text)
            assert says in problem(response, response.status_code)["detail"], spec
        assert client.get("/healthz").status_code == 200


def test_bad_initial_models_are_400(network: LocalNetwork) -> None:
    job_id = fresh_id("bad-initial")
    wrong = params_to_bytes(logreg.init_params(DIMS + 1, CLASSES))
    with network[COORDINATOR].client() as client:
        problem(start(client, terms(job_id), initial="not base64 !"), 400)
        problem(start(client, terms(job_id), initial=base64.b64encode(b"QDFP1 junk").decode()), 400)
        shaped = problem(
            start(client, terms(job_id), initial=base64.b64encode(wrong).decode()), 400
        )
        assert "wrong_shape" in shaped["detail"] or "shape" in shaped["detail"]
        problem(client.post(JOBS, json={"terms": "a job"}), 422)
        # none of them published the job
        assert job_id not in [j["job_id"] for j in client.get(JOBS).json()]


def test_the_wrong_role_is_refused_with_403(network: LocalNetwork, shard: Path) -> None:
    job_id = fresh_id("roles")
    with network[COORDINATOR].client() as sunarc:
        assert start(sunarc, terms(job_id)).status_code == 200
    # only the coordinator's own operator publishes jobs on its node
    with network["cellex"].client() as cellex:
        foreign = start(cellex, terms(fresh_id("foreign")), coordinator=COORDINATOR)
        assert "own operator" in problem(foreign, 403)["detail"]
    # polycell is no member of the job, the regulator trains in no job
    for name in ("polycell", "regulator"):
        with network[name].client() as client:
            joined = client.post(
                SESSIONS, json={"job_id": job_id, "coordinator": COORDINATOR, "data": str(shard)}
            )
            assert joined.status_code in (403, 404), (name, joined.text)
            problem(joined, joined.status_code)
            # nothing started for this job (the shared network may hold other tests' sessions)
            assert job_id not in [s["job_id"] for s in client.get(SESSIONS).json()]


def test_data_the_node_cannot_use_is_400(
    network: LocalNetwork, shard: Path, tmp_path: Path
) -> None:
    job_id = fresh_id("bad-data")
    wrong = tmp_path / "wrong.npz"
    logreg.save_dataset(wrong, logreg.make_blobs(50, DIMS + 3, CLASSES, seed=1))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    with network[COORDINATOR].client() as sunarc:
        assert start(sunarc, terms(job_id)).status_code == 200
    with network["cellex"].client() as client:
        for data in ("shard.npz", str(tmp_path / "missing.npz"), str(tmp_path), wrong, junk):
            body = {"job_id": job_id, "coordinator": COORDINATOR, "data": str(data)}
            problem(client.post(SESSIONS, json=body), 400)
            problem(
                client.post(SESSIONS, json={**body, "data": str(shard), "test": str(data)}), 400
            )
        sessions = client.get(SESSIONS).json()
        assert job_id not in [s["job_id"] for s in sessions]


def test_job_lists_page_by_cursor(network: LocalNetwork) -> None:
    with network[COORDINATOR].client() as sunarc:
        for _ in range(2):
            assert start(sunarc, terms(fresh_id("paged"))).status_code == 200
        everything = [j["job_id"] for j in sunarc.get(JOBS).json()]
        assert len(everything) >= 2
        seen: list[str] = []
        params: dict[str, object] = {"limit": 1}
        while True:
            page = sunarc.get(JOBS, params=params)
            assert page.status_code == 200 and len(page.json()) <= 1
            seen += [j["job_id"] for j in page.json()]
            cursor = page.headers.get("X-Next-Cursor")
            if cursor is None:
                break
            params = {"limit": 1, "cursor": cursor}
        assert seen == everything
        problem(sunarc.get(JOBS, params={"cursor": "not-a-cursor"}), 400)
