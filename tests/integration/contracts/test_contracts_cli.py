"""The contract commands of the ``qdspace`` CLI against running nodes."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app

from .conftest import CELLEX_ORDER, QA, Space

pytestmark = pytest.mark.integration


def test_catalog_negotiate_transfer_and_list_from_the_command_line(space: Space) -> None:
    runner = CliRunner()
    oem = str(space.directory("sunarc"))
    listed = runner.invoke(app, ["catalog", "--dir", oem, "cellex"])
    assert listed.exit_code == 0, listed.output
    assert "live-inspections" in listed.output and "operator_id" in listed.output
    agreed = runner.invoke(
        app,
        [
            "negotiate",
            "--dir",
            oem,
            "cellex",
            "process-genealogy",
            "--purpose",
            QA,
            "--order",
            CELLEX_ORDER,
        ],
    )
    assert agreed.exit_code == 0, agreed.output
    match = re.search(r"agreement (agr-[0-9a-f]+)", agreed.output)
    assert match and "signed by both parties" in agreed.output
    pulled = runner.invoke(
        app, ["transfer", "--dir", oem, match.group(1), "--purpose", QA, "--order", CELLEX_ORDER]
    )
    assert pulled.exit_code == 0, pulled.output
    assert "COMPLETED" in pulled.output
    refused = runner.invoke(
        app,
        [
            "transfer",
            "--dir",
            oem,
            match.group(1),
            "--purpose",
            "marketing",
            "--order",
            CELLEX_ORDER,
        ],
    )
    assert refused.exit_code == 1
    assert "purpose marketing is not granted" in refused.output
    shown = runner.invoke(app, ["contracts", "--dir", oem])
    assert shown.exit_code == 0 and match.group(1)[:12] in shown.output
    agreement = match.group(1)
    # one agreement read three ways (the node named before the subcommand)
    signed = runner.invoke(app, ["contracts", "--dir", oem, "show", agreement])
    assert signed.exit_code == 0, signed.output
    assert agreement in signed.output and "signature" in signed.output
    allowed = runner.invoke(
        app,
        ["contracts", "--dir", oem, "explain", agreement, "--purpose", QA, "--order", CELLEX_ORDER],
    )
    assert allowed.exit_code == 0, allowed.output
    assert "read: permit" in allowed.output.splitlines()[0]
    denied = runner.invoke(
        app, ["contracts", "--dir", oem, "explain", agreement, "--purpose", "marketing"]
    )
    assert denied.exit_code == 0, denied.output
    assert "read: deny" in denied.output.splitlines()[0]
    odrl = runner.invoke(app, ["contracts", "--dir", oem, "odrl", agreement])
    assert odrl.exit_code == 0 and '"@type": "Agreement"' in odrl.output, odrl.output
    unknown = runner.invoke(app, ["contracts", "--dir", oem, "show", "agr-not-here"])
    assert unknown.exit_code == 1 and "agr-not-here" in unknown.output, unknown.output
    foreign = runner.invoke(app, ["order", "close", "--dir", oem, "PO-NOT-HERE"])
    assert foreign.exit_code == 1 and "no order PO-NOT-HERE here" in foreign.output
