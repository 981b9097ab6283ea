"""Revocation as nodes see it: the authority's signed CRL, reloaded when it changes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cryptography import x509

from node.errors import IdentityError

logger = logging.getLogger("node.identity")


class RevocationList:
    """Serial numbers the authority revoked; an unsigned or foreign CRL is refused."""

    def __init__(self, ca_cert: x509.Certificate, path: Path | None):
        self._ca_cert = ca_cert
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self.refresh()

    @property
    def path(self) -> Path | None:
        return self._path

    def refresh(self) -> None:
        """Reload the CRL when the file changed; keep the last good list if the new one is bad."""
        if self._path is None:
            return
        try:
            st = self._path.stat()
        except FileNotFoundError:
            raise IdentityError(f"revocation list not found: {self._path}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            serials = self._parse(self._path.read_bytes())
            self._serials, self._stamp = serials, stamp
        logger.info("revocation list %s loaded: %d revoked", self._path, len(serials))

    def _parse(self, data: bytes) -> frozenset[int]:
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as exc:
            raise IdentityError(f"revocation list {self._path} is corrupt: {exc}") from None
        public_key = self._ca_cert.public_key()
        if crl.issuer != self._ca_cert.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
            raise IdentityError(f"revocation list {self._path} is not signed by the authority")
        return frozenset(entry.serial_number for entry in crl)

    def is_revoked(self, serial: int) -> bool:
        try:
            self.refresh()
        except IdentityError as exc:
            logger.error("keeping the previous revocation list: %s", exc)
        return serial in self._serials
