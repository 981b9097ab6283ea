"""``qdspace authority serve`` under a caller trying codes as fast as it is answered.

Before: every refused preview, enrollment or renewal was worked through and logged, as
fast as the caller sent them. Now an address has a budget of refusals: past it, a 429
problem with Retry-After before any work, the flood logged once, and other addresses
(other loopback addresses here: Linux routes all of 127/8 to lo) keep theirs. Nothing
is timed: the bounds are computed from the time the test took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.authority.attempts import (
    DEFAULT_BURST,
    DEFAULT_EVERY_S,
    DEFAULT_REPORT_EVERY_S,
)

from .authority_service import Service, authority_service, client_from, foreign_code, problem

pytestmark = pytest.mark.integration

PREVIEW = "/v1/enrollment/preview"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with authority_service(tmp_path / "authority", "flood-space") as served:
        yield served


def test_a_flood_of_refused_codes_gets_429_and_is_logged_once(
    service: Service, tmp_path: Path
) -> None:
    bad = foreign_code(tmp_path / "foreign", "flood-space")
    started = time.monotonic()
    with client_from(service, "127.0.0.2") as mallory:
        answers = [mallory.post(PREVIEW, json={"code": bad}) for _ in range(DEFAULT_BURST)]
        assert [a.status_code for a in answers] == [403] * DEFAULT_BURST  # the burst, worked
        statuses = [mallory.post(PREVIEW, json={"code": bad}).status_code for _ in range(300)]
        while (over := mallory.post(PREVIEW, json={"code": bad})).status_code == 403:
            statuses.append(403)  # a token came back just then: the next one is over
    elapsed = time.monotonic() - started
    # the tokens back while the test ran may have bought a few more refusals, no more
    assert statuses.count(403) <= elapsed / DEFAULT_EVERY_S + 1
    assert statuses.count(429) >= 300 - (elapsed / DEFAULT_EVERY_S + 1)
    assert set(statuses) <= {403, 429}
    problem(over, 429, "too many refused attempts from 127.0.0.2")
    assert 1 <= int(over.headers["retry-after"]) <= math.ceil(DEFAULT_EVERY_S)

    log = service.process.log_path.read_text()
    refused = log.count("refused an enrollment preview from 127.0.0.2")
    flood = log.count("over its refused attempts")
    assert refused == DEFAULT_BURST + statuses.count(403)  # each refusal worked is logged
    assert 1 <= flood <= elapsed / DEFAULT_REPORT_EVERY_S + 1  # not a line per 429
    assert "from 127.0.0.2 over its refused attempts" in log


def test_an_address_over_its_budget_leaves_the_others_theirs(
    service: Service, tmp_path: Path
) -> None:
    bad = foreign_code(tmp_path / "foreign", "flood-space")
    with client_from(service, "127.0.0.3") as mallory:
        statuses = [mallory.post(PREVIEW, json={"code": bad}).status_code for _ in range(80)]
        assert 429 in statuses
        code = str(service.authority.create_enrollment(name="cellex", role="supplier"))
        # the flooding address is refused before any work, even with a good code
        problem(mallory.post(PREVIEW, json={"code": code}), 429, "try again in")
    with client_from(service, "127.0.0.4") as honest:
        for _ in range(3 * DEFAULT_BURST):  # successes cost nothing
            answer = honest.post(PREVIEW, json={"code": code})
            assert answer.status_code == 200, answer.text
        problem(honest.post(PREVIEW, json={"code": bad}), 403, "refused")


def test_an_address_may_try_again_after_retry_after(service: Service, tmp_path: Path) -> None:
    bad = foreign_code(tmp_path / "foreign", "flood-space")
    code = str(service.authority.create_enrollment(name="cellex", role="supplier"))
    with client_from(service, "127.0.0.5") as caller:
        for _ in range(DEFAULT_BURST + 200):
            over = caller.post(PREVIEW, json={"code": bad})
            if over.status_code == 429:
                break
        problem(over, 429, "try again in")
        time.sleep(int(over.headers["retry-after"]))
        answer = caller.post(PREVIEW, json={"code": code})
        assert answer.status_code == 200, answer.text
