"""The signed member directory (`qdspace.node.identity.directory`), hostile cases first."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import load_key
from qdspace.node.identity.directory import (
    BadMemberSignature,
    CertificateMismatch,
    DirectoryEntry,
    FingerprintMismatch,
    MalformedDirectory,
    MemberIdMismatch,
    canonical_json,
    entry_matches_certificate,
    new_entry,
    sign_entry,
    verify_entry,
)
from qdspace.node.identity.directory_document import (
    AcceptedDirectory,
    BadAuthoritySignature,
    DirectoryRollback,
    accept_document,
    sign_document,
)
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.layout import AuthorityLayout
from qdspace.node.member_ids import member_id_for


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "test-space")


def _member(authority: Authority, tmp_path: Path, name: str, role: str = "supplier") -> MemberKeys:
    return create_member_keys(tmp_path / name, authority, name=name, role=role)


def _entry(keys: MemberKeys, port: int = 7443) -> DirectoryEntry:
    return new_entry(keys.identity, keys.signing_key, {"peer": f"10.0.0.1:{port}"})


def _document(authority: Authority, entries: list[DirectoryEntry], serial: int = 1) -> Any:
    ca_key = load_key(AuthorityLayout(authority.directory).ca_key, "authority key")
    return sign_document(authority.space, serial, entries, ca_key).to_json()


def _accept(
    authority: Authority,
    data: Any,
    held: int | None = None,
    revoked: frozenset[int] = frozenset(),
) -> AcceptedDirectory:
    return accept_document(
        data,
        ca_cert=authority.cert,
        space=authority.space,
        held_serial=held,
        is_revoked=lambda serial: serial in revoked,
    )


def test_a_signed_document_round_trips(authority: Authority, tmp_path: Path) -> None:
    a, b = _member(authority, tmp_path, "cellex"), _member(authority, tmp_path, "sunarc", "oem")
    entries = [_entry(a), _entry(b, 7444)]
    accepted = _accept(authority, _document(authority, entries, serial=3))
    assert accepted.serial == 3
    assert not accepted.dropped
    by_name = {e.name: e for e in accepted.entries}
    assert by_name["sunarc"].peer == "10.0.0.1:7444"
    assert by_name["cellex"].cert_fingerprint == a.identity.fingerprint
    assert by_name["cellex"] == entries[0]
    entry_matches_certificate(by_name["cellex"], a.identity)


def test_canonical_json_is_one_byte_string() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
    with pytest.raises(MalformedDirectory):
        canonical_json({"x": float("nan")})


def test_a_document_signed_by_another_authority_is_refused(
    authority: Authority, tmp_path: Path
) -> None:
    foreign = Authority.init(tmp_path / "foreign", "test-space")
    entry = _entry(_member(authority, tmp_path, "cellex"))
    with pytest.raises(BadAuthoritySignature, match="not signed by the authority"):
        _accept(authority, _document(foreign, [entry]))


def test_a_tampered_document_is_refused(authority: Authority, tmp_path: Path) -> None:
    entry = _entry(_member(authority, tmp_path, "cellex"))
    data = _document(authority, [entry], serial=5)
    for tamper in (
        lambda d: d.update(serial=6),
        lambda d: d["entries"][0]["endpoints"].update(peer="6.6.6.6:7443"),
        lambda d: d["entries"].append(copy.deepcopy(d["entries"][0])),
        lambda d: d.update(signature="00" * 70),
    ):
        bad = copy.deepcopy(data)
        tamper(bad)
        with pytest.raises(BadAuthoritySignature):
            _accept(authority, bad)


def test_a_rolled_back_serial_is_refused(authority: Authority, tmp_path: Path) -> None:
    entry = _entry(_member(authority, tmp_path, "cellex"))
    old = _document(authority, [entry], serial=4)
    with pytest.raises(DirectoryRollback, match="older than the held 5"):
        _accept(authority, old, held=5)
    assert _accept(authority, old, held=4).serial == 4  # the same document again is fine


def test_a_document_of_another_space_is_refused(authority: Authority, tmp_path: Path) -> None:
    entry = _entry(_member(authority, tmp_path, "cellex"))
    with pytest.raises(MalformedDirectory, match="for space"):
        accept_document(
            _document(authority, [entry]),
            ca_cert=authority.cert,
            space="other-space",
            held_serial=None,
            is_revoked=lambda s: False,
        )


def test_an_entry_signed_by_someone_else_is_dropped(authority: Authority, tmp_path: Path) -> None:
    victim = _member(authority, tmp_path, "cellex")
    good = _entry(_member(authority, tmp_path, "sunarc", "oem"))
    # the attacker re-signs the victim's entry (its own address) with another key
    hijacked = sign_entry(
        dataclasses.replace(_entry(victim), endpoints={"peer": "6.6.6.6:7443"}),
        SigningKey.generate(),
    )
    with pytest.raises(BadMemberSignature):
        verify_entry(hijacked)
    accepted = _accept(authority, _document(authority, [hijacked, good]))
    assert [e.name for e in accepted.entries] == ["sunarc"]
    assert [d.member for d in accepted.dropped] == [victim.identity.member_id]
    assert "signature is not its member's" in accepted.dropped[0].reason


def test_an_entry_changed_after_signing_is_dropped(authority: Authority, tmp_path: Path) -> None:
    entry = _entry(_member(authority, tmp_path, "cellex"))
    moved = dataclasses.replace(entry, endpoints={"peer": "6.6.6.6:1"})
    with pytest.raises(BadMemberSignature):
        verify_entry(moved)
    unsigned = dataclasses.replace(entry, signature="")
    with pytest.raises(BadMemberSignature, match="not signed"):
        verify_entry(unsigned)


def test_an_entry_whose_id_is_not_its_keys_is_dropped(authority: Authority, tmp_path: Path) -> None:
    victim = _member(authority, tmp_path, "cellex")
    attacker_key = SigningKey.generate()
    # the victim's member id and name, the attacker's verify key and signature
    forged = sign_entry(
        dataclasses.replace(_entry(victim), verify_key=bytes(attacker_key.verify_key).hex()),
        attacker_key,
    )
    with pytest.raises(MemberIdMismatch, match="not derived"):
        verify_entry(forged)
    accepted = _accept(authority, _document(authority, [forged]))
    assert not accepted.entries
    assert "not derived" in accepted.dropped[0].reason
    # a self-consistent id under a name the certificate does not carry is not this member
    own_id = member_id_for("cellex", bytes(attacker_key.verify_key))
    impostor = sign_entry(dataclasses.replace(forged, member_id=own_id), attacker_key)
    verify_entry(impostor)  # consistent in itself ...
    with pytest.raises(FingerprintMismatch):  # ... but not the victim's certificate
        entry_matches_certificate(
            dataclasses.replace(impostor, cert_fingerprint="0" * 64), victim.identity
        )
    with pytest.raises(CertificateMismatch, match="member_id is not the certificate's"):
        entry_matches_certificate(impostor, victim.identity)


def test_an_entry_of_a_revoked_certificate_is_dropped(authority: Authority, tmp_path: Path) -> None:
    rogue, good = _member(authority, tmp_path, "rogue"), _member(authority, tmp_path, "cellex")
    data = _document(authority, [_entry(rogue), _entry(good)])
    accepted = _accept(authority, data, revoked=frozenset({rogue.identity.serial}))
    assert [e.name for e in accepted.entries] == ["cellex"]
    assert "revoked" in accepted.dropped[0].reason


def test_two_members_under_one_name_are_both_dropped(authority: Authority, tmp_path: Path) -> None:
    a = _member(authority, tmp_path, "cellex")
    twin_key = SigningKey.generate()
    twin = sign_entry(
        dataclasses.replace(
            _entry(a),
            member_id=member_id_for("cellex", bytes(twin_key.verify_key)),
            verify_key=bytes(twin_key.verify_key).hex(),
        ),
        twin_key,
    )
    accepted = _accept(authority, _document(authority, [_entry(a), twin]))
    assert not accepted.entries
    assert len(accepted.dropped) == 2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"role": "admin"}, "role must be one of"),
        ({"endpoints": {"peer": "nohost"}}, "not host:port"),
        ({"endpoints": {"peer": "h:70000"}}, "not host:port"),
        ({"endpoints": {"operator": "h:1"}}, "with a 'peer'"),
        ({"endpoints": {"peer": "h:1", "Admin": "h:2"}}, "endpoint name 'Admin' is not"),
        ({"endpoints": {"peer": "h:1", "a" * 33: "h:2"}}, "is not 1-32 lower-case"),
        ({"endpoints": {"peer": "h:1", "mqtt": 5}}, "endpoint mqtt must be 1-512 visible"),
        ({"endpoints": {"peer": "h:1", "mqtt": "a b"}}, "endpoint mqtt must be 1-512 visible"),
        ({"endpoints": {"peer": "h:1", "mqtt": "x" * 513}}, "endpoint mqtt must be 1-512"),
        ({"endpoints": {"peer": "h:1", "mqtt": "h:\x00"}}, "endpoint mqtt must be 1-512"),
        ({"endpoints": {"peer": "h:1", "dsp": "https://h:1"}}, "endpoint dsp .* not host:port"),
        (
            {"endpoints": {"peer": "h:1"} | {f"k{i}": "h:1" for i in range(16)}},
            "17 endpoints, more than the 16 allowed",
        ),
        ({"cert_fingerprint": "XYZ"}, "cert_fingerprint must be 64"),
        ({"published_at": "yesterday"}, "ISO 8601"),
        ({"published_at": "2026-01-01T00:00:00"}, "time zone"),
        ({"name": "a\x00b"}, "unprintable"),
        ({"name": "x" * 500}, "name must be a string"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"signature": "zz"}, "signature must be 128 hex"),
    ],
)
def test_malformed_entries_name_the_field(
    authority: Authority, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = {**_entry(_member(authority, tmp_path, "cellex")).to_json(), **change}
    with pytest.raises(MalformedDirectory, match=message):
        DirectoryEntry.from_json(data)


def test_an_endpoint_kind_of_a_later_version_is_kept_and_the_member_stays_listed(
    authority: Authority, tmp_path: Path
) -> None:
    """A member on a newer version publishes a kind this one does not know: its entry
    still verifies (the kind is kept as signed) and is listed with the kinds known here,
    so a space upgrades one node at a time; this node publishes only what it knows."""
    keys = _member(authority, tmp_path, "cellex")
    endpoints = {"peer": "10.0.0.1:7443", "mqtt": "mqtts://cellex.example:8883/qdm"}
    newer = sign_entry(dataclasses.replace(_entry(keys), endpoints=endpoints), keys.signing_key)
    accepted = _accept(authority, _document(authority, [newer]))
    assert not accepted.dropped
    (entry,) = accepted.entries
    assert entry.peer == "10.0.0.1:7443" and entry.endpoints.get("dsp") is None
    assert entry.endpoints == endpoints and entry.signed_bytes() == newer.signed_bytes()
    assert DirectoryEntry.from_json(entry.to_json()) == entry  # republished as signed
    with pytest.raises(MalformedDirectory, match="unknown endpoint 'mqtt'; one of: peer"):
        new_entry(keys.identity, keys.signing_key, endpoints)
    # the kept kind is still under the member's signature
    tampered = {**newer.to_json(), "endpoints": {**endpoints, "mqtt": "mqtts://evil:1"}}
    with pytest.raises(BadMemberSignature):
        verify_entry(DirectoryEntry.from_json(tampered))


def test_a_malformed_entry_drops_alone(authority: Authority, tmp_path: Path) -> None:
    good = _entry(_member(authority, tmp_path, "cellex"))
    ca_key = load_key(AuthorityLayout(authority.directory).ca_key, "authority key")
    document = sign_document(authority.space, 1, [good], ca_key)
    raw = [good.to_json(), {"name": "junk"}, ["not", "an", "object"]]
    resigned = dataclasses.replace(document, raw_entries=tuple(raw))
    signature = ca_key.sign(resigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    data = dataclasses.replace(resigned, signature=signature.hex()).to_json()
    accepted = _accept(authority, data)
    assert [e.name for e in accepted.entries] == ["cellex"]
    assert len(accepted.dropped) == 2


ENVELOPE = {"space": "s", "serial": 1, "issued_at": "x", "entries": [], "signature": "00"}


@pytest.mark.parametrize(
    "data,message",
    [
        ([], "is a JSON object"),
        ({**ENVELOPE, "serial": -1}, "serial"),
        ({**ENVELOPE, "serial": True}, "serial"),
        ({**ENVELOPE, "entries": {}}, "entries"),
        ({**ENVELOPE, "signature": 5}, "signature"),
        (ENVELOPE, "ISO"),
        ({**ENVELOPE, "X-1": 1}, "unknown fields"),
        ({**ENVELOPE, **{f"later{i}": 1 for i in range(9)}}, "unknown fields"),
    ],
)
def test_malformed_documents_are_refused(authority: Authority, data: Any, message: str) -> None:
    with pytest.raises(MalformedDirectory, match=message):
        _accept(authority, data)
