"""The regulator's API: its own app on its own TLS listener, regulator credentials only.

The regulator routes (``/v1/regulator/...``: proofs, verification, passports) used to
share the operator's port, behind a gate that told the two credentials apart by path.
A node's operator API is meant for the operator's network only; a regulator calls from
outside. Serving them from separate listeners lets each be bound to its own address and
firewalled on its own, and keeps a mistake in one gate from opening the other's routes:
this app mounts no operator route at all, and the operator app no regulator route.

The same layers as the operator app (`node.api.app`), in the same order: request ids
and timing outermost, then the bearer gate (here: the regulator credential on every
path but ``/healthz`` and the API schema), the body caps, the routes; the same security
headers, and no documentation page loading a CDN's script (`node.api.headers`). ``/healthz``
answers the node's name and member id without a credential: a regulator needs the
member id as its credential's audience before it can call anything else. ``/metrics``
and the probes stay on the operator listener.
"""

from __future__ import annotations

from fastapi import FastAPI

from qdspace.node.api.gate import BearerGate, BodyLimit, JsonDepthLimit
from qdspace.node.api.headers import SecurityHeaders
from qdspace.node.api.ledger import mount_regulator_routes
from qdspace.node.api.models import Health
from qdspace.node.api.observe import ObserveRequests
from qdspace.node.api.problems import install_problem_handlers
from qdspace.node.api.regulator_auth import check_credential
from qdspace.node.context import NodeContext


def create_regulator_app(ctx: NodeContext) -> FastAPI:
    """The regulator listener's app: ``/healthz`` and ``/v1/regulator/...``, nothing else."""
    app = FastAPI(
        title=f"qdspace node {ctx.settings.name}: regulator API",
        version="0.1.0",
        description="Read-only proofs, verification and passports for regulators.",
        docs_url=None,  # no CDN script on the console's origin (`node.api.headers`)
        redoc_url=None,
    )
    app.state.node = ctx
    install_problem_handlers(app)
    member_id = ctx.keys.identity.member_id

    def regulator_check(token: str) -> object:
        """The routes check again in their own dependency; a signature costs microseconds.
        A regulator's requests take tokens of its bucket in the node's member rate
        (``rpc_rate_per_peer``, `node.rpc.member_rates`), as a member's gRPC and DSP
        requests do: a proof or a passport's verification reads the chain, and nothing
        else bounded how often one regulator could ask."""
        principal = check_credential(
            token, ca_cert=ctx.keys.trust, revocations=ctx.revocations, audience=member_id
        )
        if ctx.calls is not None:  # made with the peer listener, before any request
            ctx.calls.pace(principal.member_id, principal.name)
        return principal

    # added innermost first: SecurityHeaders -> BearerGate -> BodyLimit -> JsonDepthLimit
    app.add_middleware(JsonDepthLimit)
    app.add_middleware(BodyLimit)
    app.add_middleware(BearerGate, operator_token=None, regulator_check=regulator_check)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(
            status="ok",
            name=ctx.settings.name,
            member_id=member_id,
            role=ctx.settings.role,
            schema_version=ctx.store.schema_version(),
        )

    mount_regulator_routes(app, ctx)
    from qdspace.node.console import PREFIX as CONSOLE
    from qdspace.node.console.regulator_pages import create_regulator_console

    # the read-only verification page; its own login takes a regulator credential
    app.mount(CONSOLE, create_regulator_console(ctx, CONSOLE), name="console")
    app.add_middleware(ObserveRequests, metrics=ctx.metrics, routes=lambda: app.router.routes)
    return app
