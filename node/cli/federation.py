"""``qdspace fl start | join | status``: federated jobs from a member's node directory.

Each command speaks to the coordinator's ``Federation`` service over mutual TLS with
the node's own keys (the coordinator may be the node itself). ``start`` publishes a
job on the coordinator's running node; ``join`` trains on the member's own data and
follows the job round by round; ``status`` shows (and with ``--watch`` follows) it.

The federation room (NumPy, SQLAlchemy via the job store) and the gRPC client are
imported inside the commands: mounting these commands must not slow down every
other ``qdspace`` command (issue 21).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.errors import NodeError

if TYPE_CHECKING:
    import grpc

    from qdspace.federation.host import StatusView
    from qdspace.federation.job import JobSpec
    from qdspace.federation.params import Params
    from qdspace.federation.versions import ModelVersion
    from qdspace.node.identity.member import MemberKeys

fl_app = typer.Typer(no_args_is_help=True, help="federated learning jobs")
console = Console()
err = Console(stderr=True)

T = TypeVar("T")

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]
CoordOpt = Annotated[str | None, typer.Option(help="coordinator member name (default: this node)")]


#: EL image size of an el-mlp job whose terms do not name one (the demo's).
DEFAULT_IMAGE_SIZE = 96


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _with_channel(
    directory: Path,
    coordinator: str | None,
    call: Callable[[grpc.aio.Channel, MemberKeys, str], Awaitable[T]],
) -> T:
    """Run ``call(channel, keys, coordinator_name)`` on an mTLS channel to the coordinator."""
    import asyncio

    from qdspace.federation.errors import FederationError
    from qdspace.node.config import NodeSettings
    from qdspace.node.identity.member import load_member_keys
    from qdspace.node.rpc.client import open_channel

    try:
        settings = NodeSettings.load(directory)
        keys = load_member_keys(settings.directory)
        name = coordinator or settings.name
        if name == settings.name:
            address = f"{settings.grpc_host}:{settings.grpc_port}"
        elif name in settings.peers:
            address = settings.peers[name]
        else:
            raise NodeError(f"unknown coordinator {name!r}; known peers: {sorted(settings.peers)}")

        async def run() -> T:
            channel = open_channel(keys, address, name)
            try:
                return await call(channel, keys, name)
            finally:
                await channel.close()

        return asyncio.run(run())
    except (NodeError, FederationError) as exc:
        raise _fail(str(exc)) from None


def status_json(view: StatusView) -> dict[str, Any]:
    """A job's status as plain JSON (``fl status --json``)."""
    return {
        "job_id": view.job_id,
        "round": view.round,
        "rounds": view.rounds,
        "attempt": view.attempt,
        "phase": view.phase.value,
        "finished": view.finished,
        "version": view.version,
        "deadline_in_s": view.deadline_in_s,
        "detail": view.detail,
        "delta": view.delta,
        "agreement_asset": view.agreement_asset,
        "job_digest": view.job_digest.hex(),
        "history": [
            {
                "round": r.round,
                "version": r.version,
                "members": list(r.members),
                "bounded": list(r.bounded),
                "epsilon": r.epsilon,
            }
            for r in view.history
        ],
    }


def status_table(views: list[StatusView]) -> Table:
    table = Table("job", "round", "phase", "version", "deadline in", "last round", "epsilon")
    for v in views:
        last = v.history[-1] if v.history else None
        members = "" if last is None else f"{len(last.members)} members"
        if last is not None and last.bounded:
            members += f", bounded {','.join(last.bounded)}"
        eps = "" if last is None or last.epsilon is None else f"{last.epsilon:.2f}"
        table.add_row(
            v.job_id,
            f"{v.round}/{v.rounds}",
            v.phase.value,
            str(v.version),
            "" if v.finished else f"{v.deadline_in_s:.0f} s",
            members,
            eps,
        )
    return table


@fl_app.command("start")
def start(
    directory: DirOpt,
    terms: Annotated[Path, typer.Option(help="job terms (JSON of federation.job.JobSpec)")],
    initial: Annotated[
        Path | None, typer.Option(help="initial model (QDFP1 bytes); default all zeros")
    ] = None,
    coordinator: CoordOpt = None,
) -> None:
    """Publish a federated job on the coordinator's running node (normally this node)."""
    import numpy as np

    from qdspace.federation.job import JobSpec
    from qdspace.federation.params import params_from_bytes
    from qdspace.node.rpc.federation_client import FederationClient

    try:
        job = JobSpec.from_dict(json.loads(terms.read_text()))
        params: Params = (
            [np.zeros(s, np.float32) for s in job.shapes]
            if initial is None
            else params_from_bytes(initial.read_bytes())
        )
    except (OSError, ValueError) as exc:
        raise _fail(f"{terms if initial is None else initial}: {exc}") from None

    async def call(channel: grpc.aio.Channel, keys: MemberKeys, name: str) -> StatusView:
        return await FederationClient(channel, name, job.job_id).start_job(job, params)

    view = _with_channel(directory, coordinator, call)
    secure = "with secure aggregation" if job.secure_aggregation else "without secure aggregation"
    console.print(
        f"job [bold]{job.job_id}[/bold] published on {job.coordinator}: {job.rounds} rounds, "
        f"members {', '.join(job.members)}, strategy {job.strategy.name.value}, {secure}"
    )
    console.print(status_table([view]))


@fl_app.command("status")
def status(
    directory: DirOpt,
    coordinator: CoordOpt = None,
    job: Annotated[str | None, typer.Option(help="job id (default: all visible jobs)")] = None,
    watch: Annotated[bool, typer.Option(help="follow the job until it finishes")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the coordinator's jobs: round, phase, version, members and privacy spent."""
    from qdspace.node.rpc.federation_client import FederationClient

    async def call(channel: grpc.aio.Channel, keys: MemberKeys, name: str) -> list[StatusView]:
        client = FederationClient(channel, name, job or "")
        if not watch or job is None:
            return await client.list_jobs()
        view = await client.status()
        console.print(status_table([view]))
        while not view.finished:
            view = await client.status(view, wait_s=10.0)
            console.print(_progress_line(view))
        return [view]

    views = _with_channel(directory, coordinator, call)
    if job is not None:
        views = [v for v in views if v.job_id == job]
        if not views:
            raise _fail(f"no job {job!r} visible on {coordinator or 'this node'}")
    if as_json:
        print_json([status_json(v) for v in views])
        return
    console.print(status_table(views))
    for view in views:
        console.print(_progress_line(view), highlight=False, soft_wrap=True)


def _progress_line(view: StatusView) -> str:
    if view.finished:
        return f"{view.job_id}: {view.phase.value} after {len(view.history)} rounds ({view.detail})"
    return (
        f"{view.job_id}: round {view.round}/{view.rounds} attempt {view.attempt} "
        f"{view.phase.value}, version {view.version}"
    )


@fl_app.command("join")
def join(
    directory: DirOpt,
    job: Annotated[str, typer.Option(help="job id")],
    data: Annotated[
        Path,
        typer.Option(
            help="this member's own training data: .npz with y and x (features) or, for "
            "el-mlp jobs, images (EL cells, turned into features here)"
        ),
    ],
    coordinator: CoordOpt = None,
    test: Annotated[
        Path | None, typer.Option(help="held-out data (.npz) to score each global version on")
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            help="after the job, check the final version's ledger anchor and hot-swap it "
            "into this node's inspection tier (el-mlp jobs)"
        ),
    ] = False,
    image_size: Annotated[
        int | None,
        typer.Option(help="EL image size the features were computed at (default: job terms)"),
    ] = None,
) -> None:
    """Train on this member's own data and take part in every round until the job ends.

    A job under contract is first negotiated with the coordinator through this
    member's running node (its offer: model updates for training only). Trains the
    job's model kind (logreg or el-mlp); the data never leaves this machine.
    """
    import asyncio

    from qdspace.inference.errors import InspectionUnavailableError
    from qdspace.inference.extras import require_model_export

    if deploy:
        try:  # before any round: the deployment at the end needs the ``inspect`` extra
            require_model_export()
        except InspectionUnavailableError as exc:
            raise _fail(str(exc)) from None

    from qdspace.federation.models import model_kind
    from qdspace.federation.strategies import StrategyName
    from qdspace.node.client import OperatorClient, ensure_job_agreement
    from qdspace.node.identity.revocation import member_revocations
    from qdspace.node.rpc.federation_client import (
        FederationClient,
        MemberEvent,
        MemberResult,
        MemberRunner,
        coordinator_key,
    )

    def on_event(event: MemberEvent) -> None:
        if event.kind != "model":
            console.print(f"round {event.round}: {event.kind} {event.detail}", highlight=False)

    async def call(channel: grpc.aio.Channel, keys: MemberKeys, name: str) -> MemberResult:
        client = FederationClient(channel, name, job)
        # the terms, status and models need an agreement in force: learn the job's
        # contract asset from the listing (membership is enough there) and negotiate first
        listed = [s for s in await client.list_jobs() if s.job_id == job]
        asset = listed[0].agreement_asset if listed else None
        if asset is not None and name != keys.identity.name:
            with OperatorClient.from_directory(directory, timeout=60.0) as api:
                agreement, fresh = await asyncio.to_thread(ensure_job_agreement, api, name, asset)
            console.print(
                f"agreement {agreement} with {name} for {asset} "
                f"({'negotiated now' if fresh else 'held'}): model updates for training only",
                highlight=False,
            )
        spec = await client.job()
        kind = model_kind(spec.model)
        own = kind.load(data, spec.shapes)
        held_out = None if test is None else kind.load(test, spec.shapes)
        mu = (
            spec.strategy.params.get("mu", 0.0)
            if spec.strategy.name is StrategyName.FEDPROX
            else 0.0
        )

        def on_version(version: ModelVersion, params: Params) -> None:
            score = (
                ""
                if held_out is None
                else f", held-out accuracy {kind.accuracy(params, held_out):.3f}"
            )
            console.print(
                f"version {version.version} (round {version.round}) verified, signed by "
                f"{version.coordinator}{score}",
                highlight=False,
            )

        runner = MemberRunner(
            client,
            keys.identity.name,
            kind.trainer(spec.training, own, mu),
            await coordinator_key(channel, name),
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.ca_cert,
            revoked=member_revocations(directory, keys.ca_cert),
            on_event=on_event,
            on_version=on_version,
        )
        result = await runner.run()
        if deploy and result.versions and result.params is not None:
            await _deploy(client, spec, result)
        return result

    async def _deploy(client: FederationClient, spec: JobSpec, result: MemberResult) -> None:
        from qdspace.node.runtime.federation import install, member_ledger, verified_anchor

        final, params = result.versions[-1], result.params
        assert params is not None
        verdict = await verified_anchor(client, final, member_ledger(directory))
        console.print(
            f"version {final.version} anchored on the ledger: {verdict.reason}", highlight=False
        )
        size = image_size or int(spec.training.get("image_size", DEFAULT_IMAGE_SIZE))
        deployed = await asyncio.to_thread(install, directory, final, params, verdict, size)
        console.print(
            f"version {final.version} is now the active inspection model "
            f"{deployed.registry_version[:12]} (ONNX matches the model within "
            f"{deployed.max_difference:.1e}); running lines hot-swap to it",
            highlight=False,
        )

    result = _with_channel(directory, coordinator, call)
    console.print(
        f"job {job} {result.status.phase.value}: contributed to rounds {result.contributed}, "
        f"{len(result.versions)} versions verified"
    )
