"""``qdspace ledger ...``: verify proofs and passports, issue a passport, run a dev chain.

``verify`` needs nothing but the document and read access to the chain; exit code 0 means
valid, 1 invalid, 2 that the document is malformed or the chain unreachable.

A chain's JSON-RPC URL is printed only as `qdspace.util.redact.redact_url` shows it (a
hosted endpoint's URL carries its API key; what a command prints ends up in tickets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from qdspace.ledger.errors import ChainUnavailable, DocumentFormatError, LedgerError
from qdspace.node.cli.choices import LeafKind
from qdspace.node.cli.errors import fail
from qdspace.util.redact import redact_url_in

if TYPE_CHECKING:  # the verifier imports web3: loaded when `verify` runs, not at startup
    from qdspace.ledger.proofs import Verdict
    from qdspace.ledger.verify import Verification

ledger_app = typer.Typer(no_args_is_help=True, help="ledger anchoring: verify, passport, chain")
console = Console()
err = Console(stderr=True)

EXIT_VALID, EXIT_INVALID, EXIT_UNUSABLE = 0, 1, 2


@ledger_app.command("verify")
def verify(
    document: Annotated[
        Path, typer.Argument(help="proof (JSON or binary .qdp) or passport (JSON) file")
    ],
    rpc: Annotated[
        list[str],
        typer.Option(
            "--rpc",
            "--rpc-url",
            help="chain JSON-RPC URL (read access); give it again for more endpoints, run "
            "by others: VALID only if every one confirms the same anchor",
        ),
    ],
    verify_key: Annotated[
        str | None, typer.Option(help="pin a passport to this member key (hex)")
    ] = None,
    anchorer: Annotated[
        str | None,
        typer.Option(
            help="pin a proof to the member's chain account (0x...) that anchored it "
            "(needs --contract)"
        ),
    ] = None,
    contract: Annotated[
        str | None,
        typer.Option(help="the data space's anchor contract (0x...): the one read"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Verify an inclusion proof or a quality data passport against the chain (against each
    endpoint given: one endpoint that lies consistently can make a forged proof VALID)."""
    from qdspace.ledger.verify import verify_across

    try:
        data = document.read_bytes()
    except OSError as exc:
        raise fail(f"{document}: {exc.strerror}", EXIT_UNUSABLE) from None
    try:
        pinned = None if verify_key is None else bytes.fromhex(verify_key.removeprefix("0x"))
    except ValueError:
        raise fail("--verify-key is not hex", EXIT_UNUSABLE) from None
    if anchorer is not None and contract is None:
        raise fail(
            "--anchorer needs --contract: the contract a document names can log any anchorer",
            EXIT_UNUSABLE,
        )
    try:
        done = verify_across(data, rpc, verify_key=pinned, anchorer=anchorer, contract=contract)
    except DocumentFormatError as exc:
        raise fail(f"{document}: {exc}", EXIT_UNUSABLE) from None
    except ChainUnavailable as exc:
        raise fail(str(exc), EXIT_UNUSABLE) from None
    except LedgerError as exc:
        raise fail(f"{document}: {exc}", EXIT_INVALID) from None
    if as_json:
        console.print_json(json.dumps(_verification_json(done)))
    else:
        _print_verification(done, pinned_contract=contract is not None)
    raise typer.Exit(EXIT_VALID if done.verdict.valid else EXIT_INVALID)


def _checks_json(verdict: Verdict) -> list[dict[str, object]]:
    return [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks]


def _verification_json(done: Verification) -> dict[str, object]:
    """The verdict as JSON: `checks` the verdict's own (one endpoint: its checks, as
    before several could be given), `endpoints` each endpoint's verdict and report."""
    endpoints = [
        {
            "rpc_url": e.shown_url,
            "valid": e.verdict.valid,
            "reason": e.verdict.reason,
            "report": e.report,
            "checks": _checks_json(e.verdict),
        }
        for e in done.endpoints
    ]
    verdict = done.verdict
    return {
        "type": done.kind,
        "valid": verdict.valid,
        "checks": _checks_json(verdict),
        "endpoints": endpoints,
    }


def _print_checks(verdict: Verdict, indent: str = "") -> None:
    for check in verdict.checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        console.print(f"{indent}{mark} {check.name}: {escape(check.detail)}", highlight=False)


def _print_verification(done: Verification, *, pinned_contract: bool) -> None:
    """Each endpoint's checks (when there are several), then the verdict's own."""
    if len(done.endpoints) > 1:
        for e in done.endpoints:
            word = "[green]VALID[/green]" if e.verdict.valid else "[red]INVALID[/red]"
            console.print(f"endpoint {escape(e.shown_url)}: {word}", highlight=False)
            _print_checks(e.verdict, indent="  ")
            console.print(f"  reports: {escape(e.report)}", highlight=False)
    verdict = done.verdict
    _print_checks(verdict)
    word = "[green]VALID[/green]" if verdict.valid else "[red]INVALID[/red]"
    console.print(f"{word} {done.kind}: {escape(verdict.reason)}", highlight=False)
    if not pinned_contract:
        console.print(
            "[yellow]note[/yellow]: the contract the document names was read; anyone can "
            "deploy one that logs any root. Pin the data space's with --contract.",
            highlight=False,
        )


@ledger_app.command("passport")
def passport(
    directory: Annotated[Path, typer.Option("--dir", help="the member's node directory")],
    from_block: Annotated[
        int | None,
        typer.Option(help="first block of the period (default: as far back as a passport may go)"),
    ] = None,
    to_block: Annotated[int | None, typer.Option(help="last block (default: latest)")] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Issue this member's signed quality data passport (verify it with `qdspace verify`)."""
    from sqlalchemy import create_engine

    from qdspace.ledger.client import LedgerClient
    from qdspace.ledger.keys import load_signer
    from qdspace.ledger.passport import issue_passport
    from qdspace.ledger.queue import LeafQueue
    from qdspace.ledger.queue_schema import ensure_schema
    from qdspace.node.config import NodeSettings
    from qdspace.node.errors import NodeError
    from qdspace.node.identity.member import load_member_keys
    from qdspace.node.runtime.ledger import LedgerSettings

    url = ""  # the chain's, once known: an error naming it shows it redacted
    try:
        node = NodeSettings.load(directory)
        settings = LedgerSettings.load(node.directory)
        url = settings.rpc_url
        if not settings.enabled:
            raise fail(f"{node.directory}: no chain configured (ledger.json)", EXIT_UNUSABLE)
        keys = load_member_keys(node.directory)
        signer = load_signer(settings.key_file)
        engine = create_engine(node.database_url)
        ensure_schema(engine)
        doc = issue_passport(
            LeafQueue(engine),
            LedgerClient(settings.rpc_url, settings.contract),
            keys.signing_key,
            keys.identity.member_id,
            signer.address,
            from_block,
            to_block,
        )
        engine.dispose()
    except (LedgerError, NodeError) as exc:
        raise fail(redact_url_in(str(exc), url), EXIT_UNUSABLE) from None
    text = doc.to_json() + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        err.print(f"passport for {doc.member_id} written to {out}")


@ledger_app.command("chain")
def chain(
    state_dir: Annotated[Path, typer.Option(help="where the chain keeps its state")],
    port: Annotated[int, typer.Option(help="JSON-RPC port (0: any free port)")] = 8545,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    chain_id: Annotated[int | None, typer.Option(help="chain id")] = None,
    deploy: Annotated[bool, typer.Option(help="deploy the anchor contract")] = True,
) -> None:
    """Run the embedded EVM chain (py-evm, no Node.js) until SIGTERM."""
    import logging

    try:
        from qdspace.ledger.chain import DEFAULT_CHAIN_ID, run
    except ImportError as exc:  # eth-tester / py-evm: the ``devchain`` extra
        raise fail(
            f"the embedded dev chain needs eth-tester[py-evm], which is not installed "
            f"({exc}); install the dev-chain extra: pip install 'qdspace[devchain]'",
            EXIT_UNUSABLE,
        ) from None

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(state_dir, host, port, chain_id or DEFAULT_CHAIN_ID, deploy)


@ledger_app.command("deploy")
def deploy(
    rpc: Annotated[str, typer.Option("--rpc", help="chain JSON-RPC URL")],
    key_file: Annotated[
        Path | None, typer.Option(help="account key file (else $QDSPACE_CHAIN_KEY)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the deployment record here")] = None,
) -> None:
    """Deploy the anchor contract from a funded account (production or a dev chain)."""
    from qdspace.ledger.deploy import deploy_anchor
    from qdspace.ledger.keys import load_signer

    try:
        record = deploy_anchor(rpc, load_signer(key_file))
    except LedgerError as exc:
        raise fail(redact_url_in(str(exc), rpc), EXIT_UNUSABLE) from None
    if out is not None:
        out.write_text(record.to_json() + "\n")
    console.print(
        f"anchor contract at {record.address} on chain {record.chain_id} "
        f"(block {record.block_number})"
    )


@ledger_app.command("fetch-proof")
def fetch_proof(
    directory: Annotated[Path, typer.Option("--dir", help="the regulator's node directory")],
    api: Annotated[
        str,
        typer.Option("--api", help="the member node's regulator API URL (https://host:port, TLS)"),
    ],
    kind: Annotated[LeafKind, typer.Option(help="the kind of anchored record")],
    ref_id: Annotated[str, typer.Option("--id", help="the record's id")],
    out: Annotated[Path | None, typer.Option(help="write the proof JSON here")] = None,
) -> None:
    """As the regulator: fetch a member's proof for a record, with a regulator credential."""
    from qdspace.node.client import OperatorClient
    from qdspace.node.errors import NodeError
    from qdspace.node.identity.member import load_member_keys

    try:
        keys = load_member_keys(directory.resolve())
        with OperatorClient.for_regulator(keys, api) as member:
            body = member.regulator_proof(kind.value, ref_id)
    except (NodeError, KeyError, ValueError) as exc:
        raise fail(f"fetching the proof from {api}: {exc}", EXIT_UNUSABLE) from None
    text = json.dumps(body["proof"], indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
    verdict = body["verdict"]
    word = "[green]VALID[/green]" if verdict["valid"] else "[red]INVALID[/red]"
    err.print(f"member's node says: {word} {verdict['reason']}", highlight=False)


@ledger_app.command("credential")
def credential(
    directory: Annotated[Path, typer.Option("--dir", help="the regulator's node directory")],
    api: Annotated[
        str,
        typer.Option("--api", help="the member node's regulator API URL (https://host:port, TLS)"),
    ],
) -> None:
    """As the regulator: print a fresh credential for a member (paste it into the login of
    the member's read-only verification page, ``<api>/console/``)."""
    from qdspace.node.client import OperatorClient
    from qdspace.node.errors import NodeError
    from qdspace.node.identity.credential import issue_credential
    from qdspace.node.identity.member import load_member_keys

    try:
        keys = load_member_keys(directory.resolve())
        with OperatorClient(api, ca_pem=keys.ca_pem) as probe:
            audience = str(probe.healthz()["member_id"])
    except (NodeError, KeyError, ValueError) as exc:
        raise fail(f"asking {api} who it is: {exc}", EXIT_UNUSABLE) from None
    typer.echo(issue_credential(keys, audience))


@ledger_app.command("join")
def join(
    directory: Annotated[Path, typer.Option("--dir", help="the member's node directory")],
    rpc: Annotated[str, typer.Option("--rpc", help="chain JSON-RPC URL")],
    contract: Annotated[str, typer.Option(help="anchor contract address")],
    chain_id: Annotated[int, typer.Option(help="the chain id the node must see")],
    reorg_depth: Annotated[
        int,
        typer.Option(
            min=0,
            help="blocks behind the head within which anchored batches are checked for a "
            "reorganisation (0 for a chain with instant finality)",
        ),
    ] = 64,
) -> None:
    """Point a node at a chain (writes DIR/ledger.json); the key: DIR/chain.key or env."""
    from qdspace.node.layout import NodeLayout
    from qdspace.node.runtime.ledger import write_ledger_file

    path = write_ledger_file(directory.resolve(), rpc, contract, chain_id, reorg_depth)
    key = NodeLayout(directory.resolve()).chain_key
    where = str(key) if key.exists() else "$QDSPACE_CHAIN_KEY"
    console.print(f"{path} written; the node anchors from its next start with the key in {where}")
