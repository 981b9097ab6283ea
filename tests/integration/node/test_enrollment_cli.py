"""Offline enrollment end to end, through the command line, and a node serving with it:
``authority enroll`` -> ``node csr`` -> ``authority sign`` -> ``node install`` (then a
renewal the same way) -> ``node start`` -> a peer's Hello over mutual TLS.

Also certificates from another PKI: a node whose ca.crt bundle holds a second CA (as
step-ca or Vault would run it) accepts a member certificate that CA issued with the
project's verify key extension, and refuses it once the CA is out of the bundle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey

from qdspace.node.errors import IdentityError, PeerError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import (
    build_ca_cert,
    build_member_cert,
    cert_to_pem,
    identity_of,
    member_subject,
    new_tls_key,
    verify_issued_by,
)
from qdspace.node.identity.member import MemberKeys, create_member_keys, load_member_keys
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.peers import PeerDirectory

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 60.0


def qdspace(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    assert done.returncode == 0, f"qdspace {args}: {done.stdout}{done.stderr}"
    return done.stdout


def other_pki_member(
    directory: Path, authority: Authority, *, name: str, role: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A member directory whose certificate a second CA issued (carrying the verify key
    extension), ca.crt = the bundle authority + second CA. Returns that CA and its key."""
    ca_key = new_tls_key()
    ca = build_ca_cert("acme-pki", ca_key, valid_days=30, common_name="Acme Issuing CA")
    signing, tls = SigningKey.generate(), new_tls_key()
    vk = bytes(signing.verify_key)
    now = dt.datetime.now(dt.UTC)
    cert = build_member_cert(
        ca_cert=ca,
        ca_key=ca_key,
        subject=member_subject(authority.space, name, member_id_for(name, vk), role),
        public_key=tls.public_key(),
        verify_key=vk,
        hostnames=["localhost", name],
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(days=1),
    )
    directory.mkdir(parents=True)
    (directory / "signing.key").write_bytes(bytes(signing).hex().encode())
    (directory / "tls.key").write_bytes(
        tls.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "tls.crt").write_bytes(cert_to_pem(cert))
    (directory / "ca.crt").write_bytes(cert_to_pem(authority.cert) + cert_to_pem(ca))
    return ca, ca_key


def hello(keys: MemberKeys, address: str, target: str) -> object:
    peers = PeerDirectory(keys, {target: address})

    async def call() -> object:
        try:
            return await peers.hello(target, timeout=10)
        finally:
            await peers.close()

    return asyncio.run(call())


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def start_node(directory: Path, started: list[subprocess.Popen[bytes]]) -> dict[str, object]:
    log = (directory / "start.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    started.append(process)
    runtime = directory / "run" / "runtime.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, (directory / "start.log").read_text()
        try:
            data: dict[str, object] = json.loads(runtime.read_text())
            if data.get("pid") == process.pid:
                return data
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"node did not become ready: {(directory / 'start.log').read_text()}")


def test_offline_enrollment_renewal_and_a_peer_hello(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    auth_dir, node = tmp_path / "authority", tmp_path / "cellex"
    qdspace("authority", "init", "--dir", auth_dir, "--space", "ds")
    out = qdspace(
        "authority", "enroll", "--dir", auth_dir, "--name", "cellex", "--role", "supplier"
    )
    assert "will not be shown again" in out
    code = out.strip().splitlines()[-1]
    qdspace("node", "csr", "--dir", node, "--name", "cellex", "--role", "supplier", "--space", "ds")
    assert not (node / "node.json").exists()
    qdspace(
        "authority", "sign", "--dir", auth_dir, "--csr", node / "request.csr",
        "--code", code, "--out", tmp_path / "cellex.crt",
    )  # fmt: skip
    authority = Authority.load(auth_dir)
    acme = tmp_path / "acme"
    acme_ca, acme_ca_key = other_pki_member(acme, authority, name="acme", role="oem")
    (tmp_path / "bundle.pem").write_bytes(cert_to_pem(authority.cert) + cert_to_pem(acme_ca))
    qdspace(
        "node", "install", "--dir", node, "--cert", tmp_path / "cellex.crt",
        "--ca", tmp_path / "bundle.pem", "--crl", auth_dir / "crl.pem",
        "--grpc-port", "0", "--api-port", "0",
    )  # fmt: skip
    first = load_member_keys(node)
    # renewal, offline: new TLS key aside, the same signing key, the returned cert swapped in
    qdspace("node", "renew", "--dir", node)
    qdspace(
        "authority", "sign", "--dir", auth_dir, "--csr", node / "request.csr", "--renew",
        "--out", tmp_path / "renewed.crt",
    )  # fmt: skip
    qdspace("node", "install", "--dir", node, "--renew", "--cert", tmp_path / "renewed.crt")
    renewed = load_member_keys(node)
    assert renewed.identity.member_id == first.identity.member_id
    assert renewed.identity.serial != first.identity.serial

    runtime = start_node(node, started)
    assert runtime["member_id"] == first.identity.member_id
    address = str(runtime["grpc"])
    # a member the authority certified locally
    sunarc = create_member_keys(tmp_path / "sunarc", authority, name="sunarc", role="oem")
    assert hello(sunarc, address, "cellex").peer == "cellex"  # type: ignore[attr-defined]
    # a member whose certificate the second CA of cellex's bundle issued
    acme_keys = load_member_keys(acme)
    assert acme_keys.ca_cert == authority.cert and len(acme_keys.trust) == 2
    reply = hello(acme_keys, address, "cellex")
    assert reply.peer == "cellex"  # type: ignore[attr-defined]
    # that CA is trusted to issue, not to make up ids: a certificate naming sunarc (its
    # member id) over acme's verify key passes TLS and is refused by the node
    now = dt.datetime.now(dt.UTC)
    impostor = build_member_cert(
        ca_cert=acme_ca,
        ca_key=acme_ca_key,
        subject=member_subject("ds", "sunarc", sunarc.identity.member_id, "oem"),
        public_key=acme_keys.tls_key.public_key(),
        verify_key=acme_keys.identity.verify_key,
        hostnames=["localhost", "sunarc"],
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(days=1),
    )
    with pytest.raises(PeerError, match=r"UNAUTHENTICATED.*binds member id"):
        hello(dataclasses.replace(acme_keys, cert=impostor), address, "cellex")


def test_a_member_certificate_of_a_ca_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "authority", "ds")
    other_pki_member(tmp_path / "n", authority, name="acme", role="supplier")
    keys = load_member_keys(tmp_path / "n")
    assert identity_of(keys.cert).name == "acme"
    with pytest.raises(IdentityError, match="not issued by"):
        verify_issued_by(keys.cert, authority.cert)
    (tmp_path / "n" / "ca.crt").write_bytes(cert_to_pem(authority.cert))
    with pytest.raises(IdentityError, match="not issued by"):
        load_member_keys(tmp_path / "n")


def test_a_bundle_may_hold_only_cas(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "authority", "ds")
    keys = create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    (tmp_path / "n" / "ca.crt").write_bytes(keys.ca_pem + keys.cert_pem)
    with pytest.raises(IdentityError, match="not a CA"):
        load_member_keys(tmp_path / "n")


def test_a_refused_code_exits_1_with_one_line(tmp_path: Path) -> None:
    auth_dir = tmp_path / "authority"
    qdspace("authority", "init", "--dir", auth_dir)
    qdspace(
        "node", "csr", "--dir", tmp_path / "n", "--name", "x", "--role", "oem", "--space", "qdspace"
    )
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", "authority", "sign", "--dir", str(auth_dir),
         "--csr", str(tmp_path / "n" / "request.csr"), "--code", "qdse1.garbage",
         "--out", str(tmp_path / "x.crt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not an enrollment code" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.crt").exists()


def test_an_enrollment_code_can_go_to_a_new_private_file(tmp_path: Path) -> None:
    auth_dir, code_file = tmp_path / "authority", tmp_path / "cellex.code"
    qdspace("authority", "init", "--dir", auth_dir, "--space", "ds")
    out = qdspace(
        "authority", "enroll", "--dir", auth_dir, "--name", "cellex", "--role", "supplier",
        "--out", code_file,
    )  # fmt: skip
    code = code_file.read_text().strip()
    assert code.startswith("qdse1.") and code not in out, "the code is in the file, not printed"
    assert code_file.stat().st_mode & 0o777 == 0o600
    assert Authority.load(auth_dir).preview_enrollment(code) == ("cellex", "supplier")
    again = subprocess.run(
        [sys.executable, "-m", "qdspace", "authority", "enroll", "--dir", str(auth_dir),
         "--name", "polycell", "--role", "supplier", "--out", str(code_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert code_file.read_text().strip() == code


def test_a_database_password_is_refused_on_the_command_line(tmp_path: Path) -> None:
    for command in (
        ["node", "init", "--name", "x", "--role", "oem", "--authority", str(tmp_path)],
        ["node", "install", "--cert", str(tmp_path / "c.crt")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "qdspace", *command, "--dir", str(tmp_path / "n"),
             "--db-url", "postgresql+psycopg://qdspace:s3cret@db.example/q"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "QDSPACE_DB_URL_FILE" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "n").exists()
