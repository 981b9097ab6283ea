"""The CLI reaches a node by address and token, and its listings print JSON.

``--api-url``/``--token`` (or ``QDSPACE_API_URL``/``QDSPACE_TOKEN``) name a node
without its directory, as an operator on another machine would; a refused call is one
``error:`` line naming the route and the node's problem; ``--json`` prints what a
script can parse.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork

pytestmark = pytest.mark.integration


def test_contracts_and_catalog_by_api_url_and_token_as_json(network: LocalNetwork) -> None:
    runner = CliRunner()
    oem = network["sunarc"]
    listed = runner.invoke(
        app, ["contracts", "--api-url", oem.api_url, "--token", oem.token, "--json"]
    )
    assert listed.exit_code == 0, listed.output
    body = json.loads(listed.output)
    assert set(body) == {"agreements", "transfers", "duties", "receipts"}
    assert all(isinstance(v, list) for v in body.values())
    # the same node through the environment, and a listing of a peer's catalog
    env = {"QDSPACE_API_URL": oem.api_url, "QDSPACE_TOKEN": oem.token}
    catalog = runner.invoke(app, ["catalog", "cellex", "--json"], env=env)
    assert catalog.exit_code == 0, catalog.output
    assets = json.loads(catalog.output)
    assert isinstance(assets, list) and assets
    assert {"asset_id", "kind", "offer"} <= set(assets[0])
    # the text listing of the same call agrees with the JSON one
    text = runner.invoke(app, ["catalog", "cellex"], env=env)
    assert text.exit_code == 0 and assets[0]["asset_id"] in text.output


def test_a_remote_refusal_is_one_error_line_with_the_problem(network: LocalNetwork) -> None:
    runner = CliRunner()
    oem = network["sunarc"]
    wrong = runner.invoke(
        app, ["contracts", "--api-url", oem.api_url, "--token", "not-the-token", "--json"]
    )
    assert wrong.exit_code == 1, wrong.output
    assert wrong.output.startswith("error: GET /v1/contracts/agreements: 401 ")
    missing = runner.invoke(
        app, ["order", "close", "PO-NOT-HERE", "--api-url", oem.api_url, "--token", oem.token]
    )
    assert missing.exit_code == 1, missing.output
    lines = missing.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: POST /v1/contracts/orders/PO-NOT-HERE/close: 404 "
    ), missing.output
