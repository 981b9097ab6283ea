"""The node's one fault table: every row names a real error, the most specific row wins,
and the three transports read it (`qdspace.node.faults`)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import grpc
import pytest

from qdspace.connector.contract_errors import ContractError, UnknownContractError
from qdspace.connector.contract_store import ConcurrentUpdateError
from qdspace.connector.genealogy import NotYourBatch, UnknownBatch
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.ledger.errors import ChainUnavailable, DocumentFormatError, ProofFormatError
from qdspace.node import faults
from qdspace.node.api.problems import status_of
from qdspace.node.api.regulator_auth import CredentialError
from qdspace.node.errors import ConfigError, NodeError, PeerError, UnknownPeerError
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.node.rpc.codes import status_code
from qdspace.policies.errors import PolicyDenied


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def _resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type), path
    return found


def test_every_row_names_an_exception_of_the_codebase_or_a_builtin() -> None:
    for path, row in faults.FAULTS.items():
        cls = _resolve(path)  # a typo or a moved class fails here
        assert faults.class_path(cls) == path, (path, cls)
        assert issubclass(cls, Exception), cls
        assert cls.__module__.startswith("qdspace.") or cls.__module__ == "builtins", cls
        assert row.grpc is None or row.grpc in grpc.StatusCode.__members__, (cls, row)
        assert row.http is None or 400 <= row.http <= 599, (cls, row)
        assert row.exit is None or row.exit in (1, 2), (cls, row)


def test_the_most_specific_row_wins() -> None:
    assert faults.http_status(UnknownPeerError("x")) == 404  # PeerError alone is 502
    assert faults.http_status(PeerError("x")) == 502
    assert faults.http_status(CredentialError("x")) == 403  # IdentityError's row
    assert faults.grpc_status_name(StaleRevocationList("x")) == "UNAVAILABLE"
    assert faults.grpc_status_name(CredentialError("x")) == "UNAUTHENTICATED"
    assert faults.grpc_status_name(ConcurrentUpdateError("x")) == "ABORTED"
    assert faults.grpc_status_name(UnknownContractError("x")) == "NOT_FOUND"
    assert faults.http_status(ProofFormatError("x")) == 422  # DocumentFormatError's row
    assert faults.http_status(PolicyDenied("x")) == 403  # no HTTP cell: PermissionError's
    assert faults.http_status(ConfigError("x")) == 400
    assert faults.http_status(NodeError("x")) == 500  # nobody's opinion: the node's bug
    # a class resolves like its instances
    assert faults.http_status(UnknownPeerError) == 404


def test_refusal_reasons_are_named_in_the_table() -> None:
    assert set(faults.REFUSAL_GRPC) <= {r.name for r in RefusalReason}
    assert _resolve(faults.UPDATE_REFUSED) is UpdateRefused


def test_the_table_imports_nothing_of_the_project() -> None:
    # the CLI consults it on every error, so it must stay as light as the CLI's client
    probe = (
        "import sys, qdspace.node.faults; "
        "print(sorted(m for m in sys.modules if m.startswith('qdspace.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['qdspace.node', 'qdspace.node.faults']", done.stdout


def test_transports_may_disagree_on_purpose() -> None:
    """A peer must not learn which batch ids exist; the operator may."""
    assert faults.grpc_status_name(UnknownBatch("x")) == "PERMISSION_DENIED"
    assert faults.grpc_status_name(NotYourBatch("x")) == "PERMISSION_DENIED"
    assert faults.http_status(UnknownBatch("x")) == 404
    assert faults.http_status(NotYourBatch("x")) == 403


def test_errors_that_carry_their_status() -> None:
    assert faults.http_status(PeerError("refused", "NOT_FOUND")) == 404
    assert faults.grpc_status_name(PeerError("refused", "NOT_FOUND")) == "NOT_FOUND"
    assert faults.http_status(PeerError("refused", "CANCELLED")) == 502  # unmapped: 502
    refused = UpdateRefused(RefusalReason.DUPLICATE, "again")
    assert faults.grpc_status_name(refused) == "ALREADY_EXISTS"
    late = UpdateRefused(RefusalReason.DEADLINE_PASSED, "late")
    assert faults.grpc_status_name(late) == "FAILED_PRECONDITION"


def test_every_contract_error_answers_the_status_it_names() -> None:
    """`connector` states each contract error's gRPC status in ``grpc_status``; the
    table must agree with every one of them, and HTTP follows the gRPC status."""
    import qdspace.connector as connector

    for module in pkgutil.iter_modules(connector.__path__, "qdspace.connector."):
        if not module.name.endswith(".migrations"):
            importlib.import_module(module.name)
    classes = _all_subclasses(ContractError) | {ContractError}
    assert len(classes) > 20
    for cls in classes:
        name = cls.grpc_status
        assert faults.grpc_status_name(cls) == name, cls
        assert faults.http_status(cls) == faults.HTTP_OF_GRPC.get(name, 500), cls


def test_exit_codes() -> None:
    assert faults.exit_code(ConfigError("x")) == 1
    assert faults.exit_code(UnknownContractError("x")) == 1
    assert faults.exit_code(DocumentFormatError("x")) == 2
    assert faults.exit_code(ChainUnavailable("x")) == 2
    assert faults.exit_code(RuntimeError("x")) == faults.DEFAULT_EXIT == 1


def test_each_transport_reads_the_table() -> None:
    error = UnknownContractError("no agreement agr-1 here")
    assert status_of(error) == 404
    assert status_code(error) is grpc.StatusCode.NOT_FOUND
    assert status_code(RuntimeError("bug")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("status,slug", [(404, "not-found"), (503, "service-unavailable")])
def test_problem_types_name_the_status(status: int, slug: str) -> None:
    assert faults.problem_type(status) == faults.PROBLEM_TYPE_BASE + slug


def test_the_table_imports_no_transport() -> None:
    code = (
        "import sys, qdspace.node.faults; "
        "bad = [m for m in ('grpc', 'fastapi', 'starlette', 'typer') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
