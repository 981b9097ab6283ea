"""Contract routes asked the wrong thing by an operator: a clear 4xx at once, no waiting."""

from __future__ import annotations

import time

import pytest

from .conftest import CELLEX_ORDER, Space, negotiate

pytestmark = pytest.mark.integration


def test_subscribing_on_the_provider_side_is_refused_at_once(space: Space) -> None:
    """The provider of an agreement has nobody to subscribe to: it says so, it does not hang."""
    with space.client("sunarc") as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
    assert agreement["state"] == "FINALIZED", agreement
    with space.client("cellex") as supplier:
        started = time.monotonic()
        response = supplier.post(
            "/v1/contracts/subscriptions", json={"agreement_id": agreement["agreement_id"]}
        )
        took = time.monotonic() - started
        assert 400 <= response.status_code < 500, f"HTTP {response.status_code}: {response.text}"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert took < 3, f"answered after {took:.1f} s"
        assert supplier.get("/v1/contracts/subscriptions").json() == []
