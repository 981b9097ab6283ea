"""Tenant secrets encrypted at rest: a data key per tenant, wrapped by the host master key.

A host keeps dozens of members' private keys on one disk, read by one process. Encrypting
each tenant's secret files (``signing.key``, ``tls.key``, ``contract.kek``,
``pseudonym.secret``, ``operator.token``, ``chain.key``) means a backup, a copied disk or
a tenant folder sent to the wrong place gives away nothing without the host master key
(``HOST/host.key``, or a mounted secret). Each tenant has its own 256-bit data key, kept
wrapped (AES-256-GCM under the master key) in ``HOST/tenants/<name>/data.key``; rotating
the master key rewraps the data keys only, and a tenant leaving the host takes its data
key along (`tenant export`, unsealing once).

Every sealed blob carries a small plaintext header naming the tenant and the file, and
the header is the AES-GCM associated data: a file moved to another tenant (or renamed to
another key file of the same tenant) does not open, and the error says which it was
instead of a bare authentication failure. Decrypted keys stay in memory
(`qdspace.node.identity.keyfiles`); nothing writes them back to disk in the clear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qdspace.node.host.errors import SealedFileError, WrongMasterKey
from qdspace.node.identity.files import read_file
from qdspace.util.files import write_atomic

KEY_BYTES = 32
NONCE_BYTES = 12
#: a sealed secret file; version 1
FILE_MAGIC = b"qdspace-sealed-file/1\n"
#: a tenant's data key wrapped by the master key; version 1
KEY_MAGIC = b"qdspace-wrapped-key/1\n"
#: the name a wrapped data key is bound to (as a file name in its header)
DATA_KEY_LABEL = "data.key"


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _header(magic: bytes, tenant: str, label: str) -> bytes:
    t, f = tenant.encode(), label.encode()
    return magic + bytes([len(t)]) + t + bytes([len(f)]) + f


def _parse(blob: bytes, magic: bytes, where: str) -> tuple[bytes, str, str, bytes]:
    """(header, tenant, label, nonce + ciphertext) of a sealed blob."""
    if not blob.startswith(magic):
        raise SealedFileError(f"{where} is not a sealed file of a qdspace host")
    try:
        at = len(magic)
        t_len = blob[at]
        tenant = blob[at + 1 : at + 1 + t_len].decode("ascii")
        at += 1 + t_len
        f_len = blob[at]
        label = blob[at + 1 : at + 1 + f_len].decode("ascii")
        at += 1 + f_len
    except (IndexError, UnicodeDecodeError):
        raise SealedFileError(f"{where}: the sealed header is damaged") from None
    if len(blob) < at + NONCE_BYTES + 16:
        raise SealedFileError(f"{where}: the sealed file is truncated")
    return blob[:at], tenant, label, blob[at:]


def seal(key: bytes, magic: bytes, tenant: str, label: str, plaintext: bytes) -> bytes:
    header = _header(magic, tenant, label)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header)


def _open(key: bytes, blob: bytes, magic: bytes, tenant: str, label: str, where: str) -> bytes:
    """The plaintext, or `SealedFileError` saying whose / which file it was sealed as."""
    header, sealed_for, sealed_as, body = _parse(blob, magic, where)
    if sealed_for != tenant:
        raise SealedFileError(
            f"{where} was sealed for tenant {sealed_for!r}, not {tenant!r}: a file moved "
            "between tenants does not open"
        )
    if sealed_as != label:
        raise SealedFileError(f"{where} was sealed as {sealed_as!r}, not {label!r} (renamed?)")
    try:
        return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header)
    except InvalidTag:
        raise SealedFileError(
            f"{where} fails authentication: it was altered, or sealed under another key"
        ) from None


@dataclass(frozen=True)
class MasterKey:
    """The host master key: wraps and unwraps the tenants' data keys."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise SealedFileError(f"the host master key must be {KEY_BYTES} bytes")

    @classmethod
    def parse(cls, text: str, where: str) -> MasterKey:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise SealedFileError(
                f"{where}: the host master key must be {2 * KEY_BYTES} hex characters"
            )
        return cls(key)

    def wrap(self, tenant: str, data_key: bytes) -> bytes:
        return seal(self.key, KEY_MAGIC, tenant, DATA_KEY_LABEL, data_key)

    def unwrap(self, tenant: str, blob: bytes, where: str) -> bytes:
        try:
            data_key = _open(self.key, blob, KEY_MAGIC, tenant, DATA_KEY_LABEL, where)
        except SealedFileError as exc:
            if "fails authentication" not in str(exc):
                raise
            raise WrongMasterKey(
                f"the host master key does not open {where} (tenant {tenant!r}): wrong "
                "master key, or the file was altered"
            ) from None
        if len(data_key) != KEY_BYTES:
            raise SealedFileError(f"{where}: the data key is not {KEY_BYTES} bytes")
        return data_key


class SealedKeyFiles:
    """A tenant's secret files, sealed under its data key (`identity.keyfiles.KeyFiles`)."""

    def __init__(self, tenant: str, data_key: bytes) -> None:
        self.tenant = tenant
        self._key = data_key

    def read(self, path: Path, what: str) -> bytes:
        blob = read_file(path, what)
        return _open(self._key, blob, FILE_MAGIC, self.tenant, path.name, f"{what} {path}")

    def write(self, path: Path, data: bytes) -> None:
        write_atomic(path, seal(self._key, FILE_MAGIC, self.tenant, path.name, data), mode=0o600)

    @classmethod
    def open(cls, master: MasterKey, tenant: str, wrapped_key: Path) -> SealedKeyFiles:
        """The key files of ``tenant`` whose data key is wrapped in ``wrapped_key``."""
        blob = read_file(wrapped_key, f"data key of tenant {tenant!r}")
        return cls(tenant, master.unwrap(tenant, blob, str(wrapped_key)))

    @classmethod
    def create(cls, master: MasterKey, tenant: str, wrapped_key: Path) -> SealedKeyFiles:
        """A new data key for ``tenant``, wrapped into ``wrapped_key`` (0600)."""
        data_key = new_key()
        wrapped_key.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(wrapped_key, master.wrap(tenant, data_key), mode=0o600)
        return cls(tenant, data_key)
