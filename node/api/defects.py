"""Operator REST endpoint of the defects p-chart (``/v1/inspection/defects``).

The inspection verdicts in the node's QDM, counted per batch (a verdict that names only
a serial is placed in its product's batch), and the p-chart of the fraction defective
with limits per batch size and the run rules (`connector.spc_defects`), of the
``batches`` batches judged most recently (100 unless asked for up to 2,000). Read-only;
the window is optional and must be zone-aware; a bad window or standard is a 422 naming the
field, a window without any batched verdict a 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, StringConstraints
from starlette.concurrency import run_in_threadpool

from qdspace.connector.spc_defects import PChart, p_chart
from qdspace.connector.verdict_data import (
    CHART_BATCHES,
    MAX_BATCHES,
    VerdictFilter,
    batch_defects,
)
from qdspace.node.api.deps import Ctx, require_operator
from qdspace.node.api.models import BodyDatetime
from qdspace.node.api.problems import ApiProblem

Text = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class NoDefectData(ApiProblem):
    status = 404


class BadWindow(ApiProblem):
    status = 422


class PPointPublic(BaseModel):
    """One batch on the chart: cells judged and failed, its fraction and own limits."""

    batch_id: str
    at: datetime
    inspected: int
    defective: int
    fraction: float
    lcl: float
    ucl: float
    z: float | None
    rules: list[str]
    by_class: dict[str, int]


class PAlertPublic(BaseModel):
    rule: str
    description: str
    batches: list[str]


class PChartPublic(BaseModel):
    """The p-chart: centre (p-bar, or the standard p0 asked for), points, alerts, and how
    many verdicts had no batch (left out)."""

    centre: float
    standard: bool
    unbatched: int
    points: list[PPointPublic]
    alerts: list[PAlertPublic]


def chart_public(chart: PChart, unbatched: int) -> PChartPublic:
    return PChartPublic(
        centre=chart.centre,
        standard=chart.standard,
        unbatched=unbatched,
        points=[
            PPointPublic(
                batch_id=p.batch_id,
                at=p.at,
                inspected=p.inspected,
                defective=p.defective,
                fraction=p.fraction,
                lcl=p.lcl,
                ucl=p.ucl,
                z=p.z,
                rules=list(p.rules),
                by_class=dict(p.by_class),
            )
            for p in chart.points
        ],
        alerts=[
            PAlertPublic(
                rule=a.rule,
                description=a.description,
                batches=[chart.points[pt.index].batch_id for pt in a.points],
            )
            for a in chart.alerts
        ],
    )


def defects_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/inspection", dependencies=[Depends(require_operator)], tags=["inspection"]
    )

    @router.get("/defects", response_model=PChartPublic)
    async def defects(
        ctx: Ctx,
        # ISO 8601 only: lax parsing read ?since=1700000000 as seconds after 1970
        since: BodyDatetime | None = None,
        until: BodyDatetime | None = None,
        station: Text | None = None,
        order: Text | None = None,
        standard: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = None,
        batches: Annotated[int, Query(ge=1, le=MAX_BATCHES)] = CHART_BATCHES,
    ) -> PChartPublic:
        if since is not None and until is not None and since >= until:
            raise BadWindow("since: must be before until")
        f = VerdictFilter(since=since, until=until, station=station, order_id=order)
        found = await run_in_threadpool(batch_defects, ctx.store.engine, f, batches)
        if not found.subgroups:
            raise NoDefectData(
                f"no inspection verdicts with a batch here ({found.unbatched} without one)"
            )
        return chart_public(p_chart(found.subgroups, standard=standard), found.unbatched)

    return router
