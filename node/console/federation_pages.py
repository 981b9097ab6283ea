"""Federation page: jobs, rounds with accuracy curves, members and dropouts, signed
versions with their anchor status, and deploying a version into the inspection tier.

- Jobs are what ``GET /v1/federation/jobs`` answers (`FederationMember.jobs`, converted
  by `node.api.federation.status_public`); each round's members come from the job's
  history, and a member the job's terms name that sent nothing to a round is a dropout
  (the terms are read from the coordinator's job directory, `federation.job_files`).
- This node's member sessions are ``GET /v1/federation/sessions``: each verified
  version event carries the held-out scores the member measured, drawn as the job's
  accuracy curve (`svg_chart`).
- A signed version is the latest one in each job directory this node coordinates; its
  anchor is checked the way the regulator's proof route checks any leaf
  (`node.api.regulator.proof_public`, kind ``model_version``).
- Deploying is `ModelRegistry.activate`, the call behind ``qdspace inspect activate`` and
  the last step of a member's federated deploy (`node.runtime.federation.install`): the
  promotion gate decides, and a refusal is shown with its figures. A running line
  hot-swaps to the activated version on its next tick.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qdspace.federation.job_files import JOB_ID, read_job_directory
from qdspace.inference.registry import ModelRegistry
from qdspace.node.api.federation import JobStatus, session_public, status_public
from qdspace.node.api.inspection import _public as model_public
from qdspace.node.api.inspection import model_entry
from qdspace.node.console.auth import form_of
from qdspace.node.console.render import Console, Endpoint
from qdspace.node.console.svg_chart import Line, line_chart

#: how long the page waits for the coordinator's job list
JOBS_TIMEOUT_S = 3.0
#: the most job directories the page reads (and anchors it checks)
MAX_JOBS = 50


def accuracy_chart(events: list[dict[str, Any]], job_id: str) -> str:
    """Held-out accuracy (and F1 where measured) of each verified version of a job."""
    versions = [e for e in events if e.get("kind") == "version" and e.get("scores")]
    if not versions:
        return ""
    lines = [
        Line(
            metric,
            metric,
            [(float(e["version"]), e["scores"].get(metric)) for e in versions],
        )
        for metric in ("accuracy", "f1")
        if any(metric in e["scores"] for e in versions)
    ]
    first, last = versions[0]["version"], versions[-1]["version"]
    return line_chart(
        f"Held-out scores of job {job_id} by version",
        lines,
        y_range=(0.0, 1.0),
        x_labels=(f"v{first}", f"v{last}"),
        css="accuracy-chart",
    )


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx
    root = console.root

    async def jobs() -> tuple[list[JobStatus], str]:
        if ctx.federation is None:
            return [], "this node runs no federation member service"
        try:
            found = await asyncio.wait_for(ctx.federation.jobs(), JOBS_TIMEOUT_S)
        except Exception as exc:  # an unreachable coordinator is shown, not raised
            return [], f"{type(exc).__name__}: {exc}"[:300]
        return [status_public(v) for v in found], ""

    def anchor_of(ref: str) -> dict[str, Any]:
        from qdspace.node.api.regulator import proof_public

        if ctx.ledger is None:
            return {"valid": None, "reason": "this node anchors to no chain"}
        held = ctx.ledger
        try:
            proof = proof_public(
                held.queue,
                held.client,
                held.load_record,
                "model_version",
                ref,
                anchorer_of=held.anchorer_of,
            )
        except HTTPException as exc:
            return {"valid": None, "reason": f"not anchored yet ({exc.detail})"}
        except Exception as exc:  # a chain that does not answer is shown, not raised
            return {"valid": None, "reason": f"cannot check now: {type(exc).__name__}"}
        return {"valid": proof.verdict.valid, "reason": proof.verdict.reason}

    def signed_versions() -> list[dict[str, Any]]:
        folder = ctx.layout.federation_jobs
        out = []
        dirs = (
            sorted(p for p in folder.iterdir() if JOB_ID.fullmatch(p.name))
            if folder.is_dir()
            else []
        )
        for job_dir in dirs[:MAX_JOBS]:
            try:
                spec, signed = read_job_directory(job_dir)
                version = signed.version
            except Exception:  # a half-written job directory is not listed
                continue
            out.append(
                {
                    "job_id": spec.job_id,
                    "members": list(spec.members),
                    "version": version,
                    "ref": version.ledger_ref,
                    "signature": signed.signature.hex(),
                    "anchor": anchor_of(version.ledger_ref),
                }
            )
        return out

    def local() -> dict[str, Any]:
        registry = ModelRegistry(ctx.directory)
        active = registry.active()
        sessions = [] if ctx.federation is None else ctx.federation.sessions()
        public = [session_public(s) for s in sessions]
        charts = {
            s.session_id: accuracy_chart([e.model_dump() for e in s.events], s.job_id)
            for s in public
        }
        return {
            "signed": signed_versions(),
            "sessions": public,
            "charts": charts,
            "models": [model_public(v, active) for v in reversed(registry.versions())],
        }

    async def federation_page(request: Request) -> Response:
        found = await run_in_threadpool(local)
        listed, error = await jobs()
        members = {s["job_id"]: set(s["members"]) for s in found["signed"]}
        return console.page(
            request,
            "federation.html",
            "federation",
            jobs=listed,
            jobs_error=error,
            job_members=members,
            deployed=request.query_params.get("deployed", "")[:64],
            **found,
        )

    def activate(version: str) -> str:
        registry = ModelRegistry(ctx.directory)
        entry = model_entry(registry, version)
        registry.activate(entry.version, reason="deployed from the web console")
        return entry.version

    async def deploy(request: Request) -> Response:
        form = await form_of(request)
        version = await run_in_threadpool(activate, form.get("version", "").strip())
        return RedirectResponse(f"{root}/federation?deployed={version[:12]}", status_code=303)

    return [
        ("/federation", federation_page, "GET"),
        ("/federation/deploy", deploy, "POST"),
    ]
