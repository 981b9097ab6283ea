"""A node's HTTPS listeners take a caller's address from its connection, never from an
X-Forwarded-For header: uvicorn's default believed the header from loopback (and from
whatever FORWARDED_ALLOW_IPS names), so any caller on the node's machine could name any
client address."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qdspace.node.run import https_server, start_listener

pytestmark = pytest.mark.asyncio


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "c.pem", folder / "k.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _client_of(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """Answers with the client address uvicorn gave the request."""
    host = (scope.get("client") or ("?", 0))[0].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": host})  # type: ignore[operator]


async def test_a_forwarded_for_header_from_loopback_names_no_client(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = https_server(_client_of, cert, key, lifespan="off")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = await start_listener(server, sock)
    try:
        async with httpx.AsyncClient(verify=False) as client:
            answer = await client.get(
                f"https://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.9"}
            )
        assert answer.text == "127.0.0.1"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
