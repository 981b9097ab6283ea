"""Helpers of the federation's unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from qdspace.federation.job import JobSpec


def logreg_job(
    shapes: Sequence[tuple[int, ...]], members: Sequence[str], /, **overrides: object
) -> JobSpec:
    """A two-round ``logreg`` job of `members` coordinated by sunarc, its terms changed
    by `overrides` (which may name other shapes or members too)."""
    terms: dict[str, object] = {
        "job_id": "el-1",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": tuple(shapes),
        "rounds": 2,
        "min_members": 2,
        "members": tuple(members),
        "phase_timeout_s": 10.0,
    }
    terms.update(overrides)
    return JobSpec(**terms)  # type: ignore[arg-type]
