"""The CLI reaches a node by address, token file and CA, and its listings print JSON.

``--api-url``/``--token-file``/``--ca-file`` (or ``QDSPACE_API_URL``/
``QDSPACE_TOKEN_FILE``/``QDSPACE_CA_FILE``) name a node without its directory, as an
operator on another machine would; the token is never a command-line argument
(``--token`` is gone), and the node's TLS certificate is verified against the CA given
(without one, against the system's trust store, which does not know the space CA). A
refused call is one ``error:`` line naming the route and the node's problem; ``--json``
prints what a script can parse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork, MemberProcess

pytestmark = pytest.mark.integration


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "operator.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


def remote(member: MemberProcess, token_path: str) -> list[str]:
    return [
        "--api-url", member.api_url, "--token-file", token_path, "--ca-file", str(member.ca_file)
    ]  # fmt: skip


def test_contracts_and_catalog_by_api_url_and_token_file_as_json(
    network: LocalNetwork, tmp_path: Path
) -> None:
    runner = CliRunner()
    oem = network["sunarc"]
    listed = runner.invoke(
        app, ["contracts", *remote(oem, token_file(tmp_path, oem.token)), "--json"]
    )
    assert listed.exit_code == 0, listed.output
    body = json.loads(listed.output)
    assert set(body) == {"agreements", "transfers", "duties", "receipts"}
    assert all(isinstance(v, list) for v in body.values())
    # the same node through the environment, and a listing of a peer's catalog
    env = {
        "QDSPACE_API_URL": oem.api_url,
        "QDSPACE_TOKEN_FILE": token_file(tmp_path, oem.token),
        "QDSPACE_CA_FILE": str(oem.ca_file),
    }
    catalog = runner.invoke(app, ["catalog", "cellex", "--json"], env=env)
    assert catalog.exit_code == 0, catalog.output
    assets = json.loads(catalog.output)
    assert isinstance(assets, list) and assets
    assert {"asset_id", "kind", "offer"} <= set(assets[0])
    # the text listing of the same call agrees with the JSON one
    text = runner.invoke(app, ["catalog", "cellex"], env=env)
    assert text.exit_code == 0 and assets[0]["asset_id"] in text.output
    # scripts written for $QDSPACE_TOKEN keep working
    legacy = {**env, "QDSPACE_TOKEN_FILE": "", "QDSPACE_TOKEN": oem.token}
    assert runner.invoke(app, ["contracts", "--json"], env=legacy).exit_code == 0


def test_a_remote_refusal_is_one_error_line_with_the_problem(
    network: LocalNetwork, tmp_path: Path
) -> None:
    runner = CliRunner()
    oem = network["sunarc"]
    wrong = runner.invoke(
        app, ["contracts", *remote(oem, token_file(tmp_path, "not-the-token")), "--json"]
    )
    assert wrong.exit_code == 1, wrong.output
    assert wrong.output.startswith("error: GET /v1/contracts/agreements: 401 ")
    missing = runner.invoke(
        app, ["order", "close", "PO-NOT-HERE", *remote(oem, token_file(tmp_path, oem.token))]
    )
    assert missing.exit_code == 1, missing.output
    lines = missing.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: POST /v1/contracts/orders/PO-NOT-HERE/close: 404 "
    ), missing.output


def test_a_token_is_no_argument_and_tls_is_verified(network: LocalNetwork, tmp_path: Path) -> None:
    runner = CliRunner()
    oem = network["sunarc"]
    argument = runner.invoke(app, ["contracts", "--api-url", oem.api_url, "--token", oem.token])
    assert argument.exit_code == 2, argument.output
    assert "No such option: --token" in argument.output
    # without the space CA the node's certificate is not trusted: one error line, no call
    untrusted = runner.invoke(
        app,
        ["contracts", "--api-url", oem.api_url, "--token-file", token_file(tmp_path, oem.token)],
        env={"QDSPACE_CA_FILE": ""},
    )
    assert untrusted.exit_code == 1, untrusted.output
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.output, untrusted.output
    assert len(untrusted.output.strip().splitlines()) == 1, untrusted.output
    # plain HTTP to the TLS port gets no answer, and the node stays up
    http = oem.api_url.replace("https://", "http://")
    cleartext = runner.invoke(
        app,
        ["contracts", "--api-url", http, "--token-file", token_file(tmp_path, oem.token)],
    )
    assert cleartext.exit_code == 1 and "error:" in cleartext.output, cleartext.output
    assert oem.running
    # an unreadable token file is a usage error naming it
    gone = runner.invoke(
        app, ["contracts", "--api-url", oem.api_url, "--token-file", str(tmp_path / "nope")]
    )
    unboxed = re.sub(r"[\s\u2502]", "", gone.output)  # the usage box wraps a long path anywhere
    assert gone.exit_code == 2 and "/nope:Nosuchfile" in unboxed, gone.output
