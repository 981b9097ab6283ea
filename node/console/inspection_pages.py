"""The inspection line page and its heatmap files.

The page is `console.inspection`'s views rendered. A heatmap is served only when the
version's explanation index lists its name (`node.api.inspection.heatmap_file`, the
check the API's heatmap route makes): the URL's name is compared with the names the
index wrote, never joined to a path, so ``../``, an absolute path or an unlisted file
is a 404, and the session gate keeps the files behind the console's login.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from qdspace.inference.registry import ModelRegistry
from qdspace.node.api.inspection import heatmap_file
from qdspace.node.console import inspection
from qdspace.node.console.render import SECURITY_HEADERS, Console, Endpoint
from qdspace.node.console.trace_pages import checked_text


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx
    directory = ctx.directory
    layout = ctx.layout
    counts = inspection.StationCounts()  # kept between this console's page loads

    def view() -> dict[str, Any]:
        status = inspection.read_json(layout.line_status)
        registry = inspection.registry_view(directory)
        active = registry["active_model"]
        heat_version, groups = inspection.heatmap_groups(
            directory, None if active is None else active.version
        )
        return {
            "line": inspection.stored_line(ctx, counts),
            "line_status": status,
            "drift": inspection.read_json(layout.drift),
            "drift_svg": inspection.drift_chart(status),
            "heat_version": heat_version,
            "groups": groups,
            **registry,
        }

    async def inspection_page(request: Request) -> Response:
        found = await run_in_threadpool(view)
        return console.page(request, "inspection.html", "inspection", **found)

    async def heatmap(request: Request) -> Response:
        version = checked_text(str(request.path_params["version"]), "model version")
        name = checked_text(str(request.path_params["name"]), "heatmap", 200)
        path = await run_in_threadpool(
            heatmap_file, ModelRegistry(directory), directory, version, name
        )
        headers = {**SECURITY_HEADERS, "cache-control": "private, max-age=300"}
        return FileResponse(path, media_type="image/png", headers=headers)

    return [
        ("/inspection", inspection_page, "GET"),
        ("/inspection/heatmaps/{version}/{name}", heatmap, "GET"),
    ]
