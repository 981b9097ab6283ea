"""``qdspace authority``'s numbers and codes on the command line.

``crl --valid-days inf|nan|1e10`` and ``enroll --ttl 99999999999d`` ended in an
OverflowError or ValueError traceback, and ``crl --valid-days 1e-9`` wrote a list stale
before any node read it (a node with a stale list refuses every call). Each is now one
line, exit code 2, and the files stay as they were. ``cancel`` withdraws a code still
waiting: a name has one at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdspace.node.cli.authority import authority_app
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.enrollment import load_book

runner = CliRunner()


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", space="numbers")


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(authority_app, list(args))
    return result.exit_code, result.output


def _one_line_usage_error(code: int, output: str, needle: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output and "Error" not in output.replace("error:", "")
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert needle in lines[0], output


@pytest.mark.parametrize("days", ["inf", "-inf", "nan", "1e10", "1e-9", "0", "-1", "91"])
def test_a_crl_validity_out_of_bounds_is_one_line(authority: Authority, days: str) -> None:
    before = authority.files.crl.read_bytes()
    code, output = _invoke("crl", "--dir", str(authority.directory), "--valid-days", days)
    _one_line_usage_error(code, output, "valid for 1 hour to 90 days")
    assert authority.files.crl.read_bytes() == before


def test_a_crl_validity_within_bounds_is_issued(authority: Authority) -> None:
    code, output = _invoke("crl", "--dir", str(authority.directory), "--valid-days", "0.5")
    assert code == 0 and "valid 0.5 days" in output, output


@pytest.mark.parametrize("ttl", ["99999999999d", "9" * 400 + "d", "31d", "0s", "0.0h", "24x"])
def test_a_code_lifetime_out_of_bounds_is_one_line(authority: Authority, ttl: str) -> None:
    args = ("enroll", "--dir", str(authority.directory), "--name", "acme", "--role", "supplier")
    code, output = _invoke(*args, "--ttl", ttl)
    _one_line_usage_error(code, output, "--ttl")
    assert load_book(authority.files.enrollments) == {}


def test_a_name_has_one_code_waiting_until_it_is_cancelled(authority: Authority) -> None:
    where = ("--dir", str(authority.directory))
    enroll = ("enroll", *where, "--name", "acme")
    code, output = _invoke(*enroll, "--role", "supplier", "--ttl", "30d")
    assert code == 0, output
    (first,) = load_book(authority.files.enrollments)
    code, output = _invoke(*enroll, "--role", "regulator")
    assert code == 1 and f"cancel --code {first}" in output, output
    _one_line_usage_error(*_invoke("cancel", *where), "give --code or --name")
    code, output = _invoke("cancel", *where, "--code", first)
    assert code == 0 and f"cancelled enrollment code {first} for acme (supplier" in output
    assert load_book(authority.files.enrollments) == {}
    code, output = _invoke("cancel", *where, "--code", first)
    assert code == 1 and "no enrollment code" in output, output
    code, output = _invoke(*enroll, "--role", "regulator")
    assert code == 0, output
    (second,) = load_book(authority.files.enrollments)
    code, output = _invoke("cancel", *where, "--name", "acme")
    assert code == 0 and f"cancelled enrollment code {second} for acme (regulator" in output
