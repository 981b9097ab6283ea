"""How a node reads and writes its private key files: one small interface, two kinds.

A self-hosted node keeps its secrets (``signing.key``, ``tls.key``, ``contract.kek``,
``pseudonym.secret``, ``operator.token``, ``chain.key``) as plain 0600 files in its
directory: the operating system's file permissions are the protection. A managed host
(`qdspace.node.host`) keeps many members on one disk and encrypts each tenant's secrets
at rest under a per-tenant data key (`qdspace.node.host.sealing`). The code that loads
keys (`identity.member.load_member_keys`, `context.build_context`,
`runtime.contracts.build_runtime`, the ledger) must not care which: it reads through a
`KeyFiles` and gets the plaintext in memory, and nothing writes a decrypted copy to disk.

`PLAIN` is the self-hosted kind and every function's default, so a node directory on its
own behaves exactly as before.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.identity.files import read_file
from qdspace.util.files import write_atomic

__all__ = ["PLAIN", "KeyFiles", "PlainKeyFiles", "transient_key_file"]


class KeyFiles(Protocol):
    """Reads and writes a node's secret files (the path names the file, as in
    `qdspace.node.layout.NodeLayout`; an implementation may store it transformed)."""

    def read(self, path: Path, what: str) -> bytes:
        """The plaintext of ``path``; an `IdentityError` naming the file if it cannot be."""
        ...

    def write(self, path: Path, data: bytes) -> None:
        """Store ``data`` as ``path`` (atomically, readable by the owner only)."""
        ...


class PlainKeyFiles:
    """Secrets as plain files, mode 0600: a self-hosted node's directory."""

    def read(self, path: Path, what: str) -> bytes:
        return read_file(path, what)

    def write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data, mode=0o600)


#: the default everywhere: a node directory of its own
PLAIN: KeyFiles = PlainKeyFiles()


@contextmanager
def transient_key_file(
    cert_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> Iterator[tuple[Path, Path, str]]:
    """(certificate file, key file, password) for a TLS library that loads keys only from
    files (Python's ``ssl``, uvicorn): the key is written encrypted under a one-time
    password that exists only in memory, and both files are gone when the block ends.
    No plaintext copy of a decrypted key ever touches the disk."""
    password = secrets.token_hex(32)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    with tempfile.TemporaryDirectory(prefix="qdspace-tls-") as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        write_atomic(cert_file, cert_pem, mode=0o600)
        write_atomic(key_file, encrypted, mode=0o600)
        yield cert_file, key_file, password
