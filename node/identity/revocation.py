"""Revocation as nodes see it: the authority's signed CRL, reloaded when it changes.

Revocation fails closed. A node without a CRL does not start (it could not tell a
revoked member from a good one); a CRL past its ``nextUpdate`` is stale, and while
it is stale every peer call is refused with the reason and how to refresh it (the
authority re-issues it with ``qdspace authority crl``; the node reloads the file
as soon as it changes, no restart needed). A replaced file that is corrupt or not
signed by the authority is ignored (the last good list stays in force until its
own ``nextUpdate``), so a broken copy cannot switch revocation off.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from qdspace.node.errors import IdentityError

logger = logging.getLogger("node.identity")

REFRESH_HINT = (
    "the authority re-issues it with `qdspace authority crl --dir AUTHORITY`; "
    "copy it to {path} and the node reloads it"
)


class RevocationListMissing(IdentityError):
    """The node has no revocation list: it cannot tell revoked members from good ones."""


class StaleRevocationList(IdentityError):
    """The revocation list is past its nextUpdate: revocations since then are unknown."""


@dataclass(frozen=True)
class _Loaded:
    serials: frozenset[int]
    issued_at: dt.datetime
    next_update: dt.datetime


def _missing_message(path: Path | None) -> str:
    where = f"{path} does not exist" if path is not None else "no crl_path is configured"
    return (
        f"revocation list required: {where}. Copy the authority's crl.pem "
        "(`qdspace authority crl --dir AUTHORITY` re-issues it) and set crl_path in "
        "node.json (`qdspace node init --authority` does both)"
    )


class RevocationList:
    """Serial numbers the authority revoked; an unsigned, foreign or missing CRL is refused."""

    def __init__(self, ca_cert: x509.Certificate, path: Path | None):
        self._ca_cert = ca_cert
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        if path is None or not path.exists():
            raise RevocationListMissing(_missing_message(path))
        self._loaded = self._parse(path.read_bytes())
        self._stamp = self._stat(path)
        logger.info(
            "revocation list %s loaded: %d revoked, next update %s",
            path,
            len(self._loaded.serials),
            self._loaded.next_update.isoformat(),
        )

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def next_update(self) -> dt.datetime:
        return self._loaded.next_update

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Reload the CRL when the file changed; keep the last good list if the new one is bad."""
        assert self._path is not None
        stamp = self._stat(self._path)
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            if stamp is None:
                logger.error("revocation list %s disappeared; keeping the last one", self._path)
                return
            try:
                loaded = self._parse(self._path.read_bytes())
            except (OSError, IdentityError) as exc:
                logger.error("keeping the previous revocation list: %s", exc)
                return
            if loaded.issued_at < self._loaded.issued_at:  # a rollback to an older list
                logger.error(
                    "revocation list %s is older than the one in force; ignored", self._path
                )
                return
            self._loaded = loaded
        logger.info(
            "revocation list %s reloaded: %d revoked, next update %s",
            self._path,
            len(loaded.serials),
            loaded.next_update.isoformat(),
        )

    def _parse(self, data: bytes) -> _Loaded:
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as exc:
            raise IdentityError(f"revocation list {self._path} is corrupt: {exc}") from None
        public_key = self._ca_cert.public_key()
        if crl.issuer != self._ca_cert.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
            raise IdentityError(f"revocation list {self._path} is not signed by the authority")
        next_update = crl.next_update_utc
        if next_update is None:
            raise IdentityError(f"revocation list {self._path} has no nextUpdate")
        serials = frozenset(entry.serial_number for entry in crl)
        return _Loaded(serials, crl.last_update_utc, next_update)

    def check_fresh(self, now: dt.datetime | None = None) -> None:
        """Raise :class:`StaleRevocationList` when the list in force is past its nextUpdate."""
        self.refresh()
        now = now or dt.datetime.now(dt.UTC)
        if now > self._loaded.next_update:
            raise StaleRevocationList(
                f"this node's revocation list expired at {self._loaded.next_update.isoformat()}; "
                "no peer call is served until it is refreshed ("
                + REFRESH_HINT.format(path=self._path)
                + ")"
            )

    def is_revoked(self, serial: int) -> bool:
        """True when revoked; raises :class:`StaleRevocationList` when the list is stale."""
        self.check_fresh()
        return serial in self._loaded.serials


def member_revocations(directory: Path, ca_cert: x509.Certificate) -> Callable[[int], bool]:
    """The member node's own revocation list, to check the roster's certificates with
    (a member without one refuses secure rounds: revocation fails closed). Used by
    ``qdspace fl join`` and the demo's federation chapter."""
    from qdspace.node.config import NodeSettings

    return RevocationList(ca_cert, NodeSettings.load(directory).crl_path).is_revoked
