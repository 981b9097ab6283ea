"""What the authority attests of a member (`qdspace.node.identity.attestations`): framework
agreements recorded in its register, signed into the directory document, read by nodes
only for the entries they take, and refused when malformed or tampered with."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.authority.service import AuthorityService
from qdspace.node.errors import IdentityError
from qdspace.node.identity.attestations import MalformedAttestation, frameworks_of
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import load_key
from qdspace.node.identity.directory import (
    DirectoryEntry,
    MalformedDirectory,
    canonical_json,
    new_entry,
)
from qdspace.node.identity.directory_document import (
    DOCUMENT_DOMAIN,
    AcceptedDirectory,
    BadAuthoritySignature,
    accept_document,
    sign_document,
)
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.layout import AuthorityLayout

DEG = "DataExchangeGovernance:1.0"
PCF = "Pcf:1.0"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "test-space")


def _member(authority: Authority, tmp_path: Path, name: str) -> MemberKeys:
    return create_member_keys(tmp_path / name, authority, name=name, role="supplier")


def _entry(keys: MemberKeys) -> DirectoryEntry:
    return new_entry(keys.identity, keys.signing_key, {"peer": "peer.example:7443"})


def _signed(authority: Authority, entries: list[DirectoryEntry], attested: Any) -> Any:
    ca_key = load_key(AuthorityLayout(authority.directory).ca_key, "authority key")
    return sign_document(authority.space, 7, entries, ca_key, attested=attested).to_json()


def _accept(authority: Authority, data: Any) -> AcceptedDirectory:
    return accept_document(
        data,
        ca_cert=authority.cert,
        space=authority.space,
        held_serial=None,
        is_revoked=lambda serial: False,
    )


def test_attested_frameworks_are_signed_and_read_for_listed_members_only(
    authority: Authority, tmp_path: Path
) -> None:
    a, b = _member(authority, tmp_path, "sunarc"), _member(authority, tmp_path, "cellex")
    gone = "qds1-someone-who-left"
    data = _signed(
        authority,
        [_entry(a), _entry(b)],
        {a.identity.member_id: (DEG, PCF), b.identity.member_id: (), gone: (DEG,)},
    )
    assert data["attested"] == {
        a.identity.member_id: {"frameworks": [DEG, PCF]},
        gone: {"frameworks": [DEG]},
    }  # a member with nothing attested is left out
    accepted = _accept(authority, json.loads(json.dumps(data)))
    assert accepted.attested == {a.identity.member_id: (DEG, PCF)}  # not the unlisted one


def test_a_document_without_attestations_is_the_one_older_nodes_read(
    authority: Authority, tmp_path: Path
) -> None:
    data = _signed(authority, [_entry(_member(authority, tmp_path, "sunarc"))], {})
    assert "attested" not in data
    assert _accept(authority, data).attested == {}


def test_an_attestation_added_or_changed_in_transit_breaks_the_signature(
    authority: Authority, tmp_path: Path
) -> None:
    """A member on the path (or a mirror of the directory) cannot attest itself."""
    a, b = _member(authority, tmp_path, "sunarc"), _member(authority, tmp_path, "polycell")
    data = _signed(authority, [_entry(a), _entry(b)], {a.identity.member_id: (PCF,)})
    mine = b.identity.member_id
    for tamper in (
        lambda d: d["attested"].update({mine: {"frameworks": [DEG]}}),
        lambda d: d["attested"][a.identity.member_id].update(frameworks=[DEG, PCF]),
        lambda d: d.pop("attested"),
    ):
        bad = copy.deepcopy(data)
        tamper(bad)
        with pytest.raises(BadAuthoritySignature):
            _accept(authority, bad)


@pytest.mark.parametrize(
    ("attested", "message"),
    [
        ([], "must be an object"),
        ({"m": []}, "must be an object of 1-8 kinds"),
        ({"m": {"frameworks": []}}, "non-empty list"),
        ({"m": {"frameworks": "Pcf:1.0"}}, "non-empty list"),
        ({"m": {"frameworks": ["Pcf 1.0"]}}, "not a framework agreement's name"),
        ({"m": {"frameworks": ["x" * 65]}}, "not a framework agreement's name"),
        ({"m": {"frameworks": [PCF, DEG]}}, "sorted, each once"),
        ({"m": {"frameworks": [DEG, DEG]}}, "sorted, each once"),
        ({"m": {"frameworks": [f"F{i:02d}" for i in range(33)]}}, "at most 32"),
        ({"": {"frameworks": [DEG]}}, "not a member id"),
    ],
)
def test_malformed_attestations_name_what_is_wrong(
    authority: Authority, attested: Any, message: str
) -> None:
    data = {
        "space": authority.space,
        "serial": 1,
        "issued_at": "2026-12-06T00:00:00+00:00",
        "entries": [],
        "signature": "00",
        "attested": attested,
    }
    with pytest.raises(MalformedDirectory, match=message):
        _accept(authority, data)


def test_a_later_versions_attestation_kind_and_document_field_are_kept_signed(
    authority: Authority, tmp_path: Path
) -> None:
    """An authority upgraded before its nodes: what this version does not read still
    verifies (the signature covers it as received), and frameworks are still read."""
    a = _member(authority, tmp_path, "sunarc")
    mid = a.identity.member_id
    built = sign_document(authority.space, 3, [_entry(a)], _ca_key(authority))
    body = {
        **built.body(),
        "attested": {mid: {"frameworks": [DEG], "licences": ["x"]}},
        "later_field": {"anything": 1},
    }

    signature = _ca_key(authority).sign(
        DOCUMENT_DOMAIN + canonical_json(body), ec.ECDSA(hashes.SHA256())
    )
    accepted = _accept(authority, {**body, "signature": signature.hex()})
    assert accepted.attested == {mid: (DEG,)}
    assert [e.member_id for e in accepted.entries] == [mid]


def _ca_key(authority: Authority) -> Any:
    return load_key(AuthorityLayout(authority.directory).ca_key, "authority key")


def test_framework_names_are_checked_and_kept_in_one_form() -> None:
    assert frameworks_of([PCF, DEG, PCF]) == (DEG, PCF)
    for bad in ("", "Pcf 1.0", "-x", "x" * 65, "ä:1"):
        with pytest.raises(MalformedAttestation, match="framework agreement's name"):
            frameworks_of([bad], "--framework")


def test_the_register_attests_withdraws_and_keeps_frameworks_across_renewal(
    authority: Authority, tmp_path: Path
) -> None:
    keys = _member(authority, tmp_path, "sunarc")
    assert authority.attest("sunarc", add=[PCF, DEG]).frameworks == (DEG, PCF)
    assert authority.attest(keys.identity.member_id, withdraw=[PCF]).frameworks == (DEG,)
    with pytest.raises(IdentityError, match=r"holds no attested framework 'Pcf:1\.0'"):
        authority.attest("sunarc", withdraw=[PCF])
    with pytest.raises(MalformedAttestation, match="--framework"):
        authority.attest("sunarc", add=["not one"])
    with pytest.raises(IdentityError, match="no active member named 'nobody'"):
        authority.attest("nobody", add=[DEG])
    (row,) = [m for m in authority.members() if m.name == "sunarc"]
    assert row.frameworks == (DEG,)
    authority.revoke("sunarc")
    with pytest.raises(IdentityError, match="no active member"):
        authority.attest("sunarc", add=[PCF])


def test_the_service_signs_what_the_register_attests_of_listed_members(
    authority: Authority, tmp_path: Path
) -> None:
    """``authority attest`` writes the register (another process, say); the service's
    next document carries the change, signed, for the members it lists."""
    a, b = _member(authority, tmp_path, "sunarc"), _member(authority, tmp_path, "cellex")
    service = AuthorityService.open(authority.directory)
    for keys in (a, b):
        service.publish(_entry(keys).to_json(), keys.cert_pem.decode())
    first = service.document()
    assert first.attested == {}
    authority.attest("sunarc", add=[DEG])
    second = service.document()
    assert second.serial > first.serial
    assert _accept(authority, second.to_json()).attested == {a.identity.member_id: (DEG,)}
    assert service.document().serial == second.serial  # no change: not signed again
    reopened = AuthorityService.open(authority.directory)  # from its saved file
    assert reopened.document().attested == {a.identity.member_id: (DEG,)}
    authority.attest("sunarc", withdraw=[DEG])
    assert _accept(authority, service.document().to_json()).attested == {}


def test_the_attest_command_refuses_in_one_line(authority: Authority, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qdspace.node.cli import app

    _member(authority, tmp_path, "sunarc")
    where = ["authority", "attest", "--dir", str(authority.directory)]
    runner = CliRunner()
    bad = runner.invoke(app, [*where, "--member", "sunarc", "--framework", "bad name"])
    assert bad.exit_code == 1 and "not a framework agreement's name" in bad.output
    nobody = runner.invoke(app, [*where, "--member", "nobody", "--framework", DEG])
    assert nobody.exit_code == 1 and "no active member named 'nobody'" in nobody.output
    assert "Traceback" not in bad.output + nobody.output
    done = runner.invoke(app, [*where, "--member", "sunarc", "--framework", DEG, "--json"])
    assert done.exit_code == 0 and '"frameworks": [' in done.output, done.output
