"""``qdspace fl start | join | status``: federated jobs, asked of a member's running node.

The node holds the keys, the revocation list, the ledger view and the model registry a
member needs, so the node runs the member's side of a job (``runtime.federation_member``)
and these commands only ask it, through its operator API (``/v1/federation``), the way
``kubectl`` asks the API server: ``start`` publishes a job on the coordinator (normally
the node itself), ``join`` starts a member session on the node and follows it, printing
its progress until the job ends, and ``status`` shows (and with ``--watch`` follows) the
jobs the coordinator shows this node. The node is named by ``--dir`` or by
``--api-url``/``--token-file`` (:mod:`node.cli.connect`); file paths given to ``join`` are read
by the node, so they name files on the node's machine.

Only the client is imported when a command runs (no NumPy, no gRPC, no federation room):
mounting these commands must not slow down every other ``qdspace`` command (issue 21).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.cli.connect import JsonOpt, Target, calls_node, print_json
from qdspace.node.cli.errors import clean_errors, fail

fl_app = typer.Typer(no_args_is_help=True, help="federated learning jobs")
console = Console()

CoordOpt = Annotated[str | None, typer.Option(help="coordinator member name (default: this node)")]
#: how often ``fl join`` asks the node for the session's new events
SESSION_POLL_S = 0.5
#: ``fl status --watch``: how long one status call may wait for the job to move
WATCH_WAIT_S = 10.0

Status = dict[str, Any]  # a job's status as the API answers it (``fl status --json``)


def status_table(views: list[Status]) -> Table:
    table = Table("job", "round", "phase", "version", "deadline in", "last round", "epsilon")
    for v in views:
        last = v["history"][-1] if v["history"] else None
        members = "" if last is None else f"{len(last['members'])} members"
        if last is not None and last["bounded"]:
            members += f", bounded {','.join(last['bounded'])}"
        eps = "" if last is None or last["epsilon"] is None else f"{last['epsilon']:.2f}"
        table.add_row(
            v["job_id"],
            f"{v['round']}/{v['rounds']}",
            v["phase"],
            str(v["version"]),
            "" if v["finished"] else f"{v['deadline_in_s']:.0f} s",
            members,
            eps,
        )
    return table


def _progress_line(view: Status) -> str:
    if view["finished"]:
        return (
            f"{view['job_id']}: {view['phase']} after {view['version']} rounds ({view['detail']})"
        )
    return (
        f"{view['job_id']}: round {view['round']}/{view['rounds']} attempt {view['attempt']} "
        f"{view['phase']}, version {view['version']}"
    )


@fl_app.command("start")
@clean_errors
@calls_node
def start(
    target: Target,
    terms: Annotated[Path, typer.Option(help="job terms (JSON of federation.job.JobSpec)")],
    initial: Annotated[
        Path | None, typer.Option(help="initial model (QDFP1 bytes); default all zeros")
    ] = None,
    coordinator: CoordOpt = None,
) -> None:
    """Publish a federated job on the coordinator's running node (normally this node)."""
    try:
        spec = json.loads(terms.read_text())
        params = None if initial is None else initial.read_bytes()
    except (OSError, ValueError) as exc:
        raise fail(f"{terms if initial is None else initial}: {exc}") from None
    if not isinstance(spec, dict):
        raise fail(f"{terms}: job terms must be a JSON object")
    with target.client() as node:
        view = node.federation.start(spec, params, coordinator)
    secure = spec.get("secure_aggregation", False)
    strategy = (spec.get("strategy") or {}).get("name", "fedavg")
    console.print(
        f"job [bold]{spec['job_id']}[/bold] published on {spec['coordinator']}: "
        f"{spec['rounds']} rounds, members {', '.join(spec['members'])}, strategy {strategy}, "
        f"{'with' if secure else 'without'} secure aggregation"
    )
    console.print(status_table([view]))


@fl_app.command("status")
@clean_errors
@calls_node
def status(
    target: Target,
    coordinator: CoordOpt = None,
    job: Annotated[str | None, typer.Option(help="job id (default: all visible jobs)")] = None,
    watch: Annotated[bool, typer.Option(help="follow the job until it finishes")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the coordinator's jobs: round, phase, version, members and privacy spent."""
    with target.client() as node:
        if watch and job is not None:
            view = node.federation.job(job, coordinator)
            console.print(status_table([view]))
            while not view["finished"]:
                view = node.federation.job(job, coordinator, seen=view, wait_s=WATCH_WAIT_S)
                console.print(_progress_line(view))
            views = [view]
        else:
            views = node.federation.jobs(coordinator)
    if job is not None:
        views = [v for v in views if v["job_id"] == job]
        if not views:
            raise fail(f"no job {job!r} visible on {coordinator or 'this node'}")
    if as_json:
        print_json(views)
        return
    console.print(status_table(views))
    for view in views:
        console.print(_progress_line(view), highlight=False, soft_wrap=True)


def _event_line(event: dict[str, Any]) -> str | None:
    """A session event as ``fl join`` prints it (a downloaded model says nothing yet)."""
    if event["kind"] == "model":
        return None
    if event["kind"] == "version":
        accuracy = event["scores"].get("accuracy")
        score = "" if accuracy is None else f", held-out accuracy {accuracy:.3f}"
        return (
            f"version {event['version']} (round {event['round']}) verified, signed by "
            f"{event['coordinator']}{score}"
        )
    return f"round {event['round']}: {event['kind']} {event['detail']}"


@fl_app.command("join")
@clean_errors
@calls_node
def join(
    target: Target,
    job: Annotated[str, typer.Option(help="job id")],
    data: Annotated[
        Path,
        typer.Option(
            help="this member's own training data on the node's machine: .npz with y and x "
            "(features) or, for el-mlp and el-cnn jobs, images (uint8 EL cells, turned into "
            "features or model inputs there)"
        ),
    ],
    coordinator: CoordOpt = None,
    test: Annotated[
        Path | None, typer.Option(help="held-out data (.npz) to score each global version on")
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            help="after the job, check the final version's ledger anchor and ONNX export, "
            "register it and, if the promotion gate lets it, hot-swap it into this node's "
            "inspection tier (el-mlp and el-cnn jobs)"
        ),
    ] = False,
    image_size: Annotated[
        int | None,
        typer.Option(help="EL image size the features were computed at (default: job terms)"),
    ] = None,
) -> None:
    """Train on this member's own data and take part in every round until the job ends.

    The member's node runs the session; this command starts it and prints its progress.
    A job under contract is first negotiated with the coordinator through this member's
    node (its offer: model updates for training only). Trains the job's model kind
    (logreg, el-mlp or el-cnn, the line's own CNN); the data never leaves the node's
    machine. A job naming a model this node does not train is refused.
    """
    with target.client(timeout=120.0) as node:
        me = str(node.node()["name"])
        name = coordinator or me
        # the terms, status and models need an agreement in force: learn the job's
        # contract asset from the listing (membership is enough there) and negotiate first
        listed = [v for v in node.federation.jobs(name) if v["job_id"] == job]
        asset = listed[0]["agreement_asset"] if listed else None
        if asset is not None and name != me:
            agreement, fresh = node.federation.ensure_agreement(name, asset)
            console.print(
                f"agreement {agreement} with {name} for {asset} "
                f"({'negotiated now' if fresh else 'held'}): model updates for training only",
                highlight=False,
            )
        session = node.federation.join(
            job,
            str(data.resolve()),
            coordinator=name,
            test=None if test is None else str(test.resolve()),
            deploy=deploy or None,
            image_size=image_size,
        )
        seen = 0
        while True:
            for event in session["events"]:
                line = _event_line(event)
                if line is not None:
                    console.print(line, highlight=False)
            seen = session["events_from"] + len(session["events"])
            if session["state"] != "running":
                break
            time.sleep(SESSION_POLL_S)
            session = node.federation.session(session["session_id"], after=seen)
    if session["state"] != "done":
        raise fail(f"job {job}: the member session {session['state']}: {session['error']}")
    deployed = session["deployment"]
    if deployed is not None:
        console.print(
            f"version {deployed['version']} anchored on the ledger: {deployed['anchor']}",
            highlight=False,
        )
        if deployed.get("active", True):
            console.print(
                f"version {deployed['version']} is now the active inspection model "
                f"{deployed['registry_version'][:12]} (ONNX matches the model within "
                f"{deployed['max_difference']:.1e}); running lines hot-swap to it",
                highlight=False,
            )
        else:
            console.print(
                f"version {deployed['version']} registered as model "
                f"{deployed['registry_version'][:12]} but not activated: {deployed['gate']}",
                highlight=False,
            )
    console.print(
        f"job {job} {session['status']['phase']}: contributed to rounds "
        f"{session['contributed']}, {len(session['versions'])} versions verified"
    )
