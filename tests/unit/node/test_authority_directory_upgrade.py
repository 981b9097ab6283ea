"""A member directory saved by an earlier version may hold an entry this version refuses
(a peer address gRPC reads as a local socket, or an IPv6 address without brackets, both
once taken). The service refused to start on it ("corrupt: move it aside"), and with it
enrollment, renewal and the revocation list; now that entry is left out, the directory
signed again, and its member publishes again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from qdspace.node.authority.service import AuthorityService
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import MemberIdentity, load_key
from qdspace.node.identity.directory import DirectoryEntry, new_entry, sign_entry
from qdspace.node.identity.directory_document import parse_document, sign_document, verify_document
from qdspace.node.member_ids import member_id_for

WHEN = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def _entry(name: str, key: SigningKey, peer: str) -> DirectoryEntry:
    vk = bytes(key.verify_key)
    identity = MemberIdentity(
        member_id_for(name, vk), name, "supplier", vk, 1, WHEN, hashlib.sha256(vk).hexdigest()
    )
    good = new_entry(identity, key, {"peer": "node.example:7443"})
    return sign_entry(dataclasses.replace(good, endpoints={"peer": peer}), key)


def test_an_entry_no_longer_valid_is_left_out_and_the_service_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    authority = Authority.init(tmp_path / "authority", "space")
    ca_key = load_key(authority.files.ca_key, "authority key")
    kept = _entry("cellex", SigningKey(b"c" * 32), "cellex.example:7443")
    gone = _entry("mallory", SigningKey(b"m" * 32), "unix-abstract:x:1")
    old = sign_document("space", 5, [kept, gone], ca_key)
    authority.files.member_directory.write_text(json.dumps(old.to_json()))
    caplog.set_level(logging.WARNING, "node.authority")
    service = AuthorityService.open(tmp_path / "authority")
    assert [e.name for e in service._document.entries] == ["cellex"]
    assert "1 entries left out, no longer valid" in caplog.text
    saved = parse_document(json.loads(authority.files.member_directory.read_text()))
    verify_document(saved, authority.cert)  # signed again, as nodes read it
    assert saved.serial > 5 and len(saved.raw_entries) == 1
