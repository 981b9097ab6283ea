"""Following the authority service: the revocation list, the member directory, our entry.

A node with an ``authority_url`` runs one `DirectoryFollower` task beside its servers.
Every ``crl_refresh_s`` it fetches the CRL and, when it is new, signed by the
authority and not older than the file in force, writes it to ``crl_path``; the node's
`RevocationList` reloads the file on its next check, so a member revoked at the
authority is refused within one refresh interval (and a CRL that cannot be refreshed
goes stale and closes the node to peers: revocation fails closed). Every
``directory_refresh_s`` it fetches the member directory, verifies it
(`identity.directory_document.accept_document`: the authority's signature, no rollback, each
entry's member signature and its certificate not revoked), keeps it in
``DIR/directory.json`` (the next start begins from it, and refuses anything older) and
hands the entries, with the framework agreements the authority attests of them, to the
peer table. It publishes the node's own entry at start, and
again whenever the directory does not hold it as it is (the authority lost it, the
certificate was renewed, the advertised address changed).

The follower never imports a transport: the service is reached through the
`AuthorityPort` it is given (``node.authority.client.AuthorityClient`` in production),
whose blocking calls run in a worker thread, and failures are logged and retried on the
next tick: the node keeps serving with what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography import x509

from qdspace.node.errors import IdentityError, NodeError
from qdspace.node.identity.attestations import Attested
from qdspace.node.identity.directory import DirectoryEntry
from qdspace.node.identity.directory_document import AcceptedDirectory, accept_document
from qdspace.node.identity.revocation import RevocationList, StaleRevocationList
from qdspace.util.files import write_atomic

logger = logging.getLogger("node.directory")
T = TypeVar("T")


class AuthorityPort(Protocol):
    """What the follower needs of the authority service (blocking calls)."""

    def crl_pem(self) -> bytes: ...

    def directory(self) -> Any: ...

    def publish(self, entry: dict[str, Any], cert_pem: bytes) -> int: ...


class PeerTable(Protocol):
    """Where verified entries go (``node.rpc.peers.PeerDirectory``)."""

    def follow(
        self, entries: Sequence[DirectoryEntry], attested: Attested | None = None
    ) -> None: ...


@dataclass(frozen=True)
class FollowerSettings:
    space: str
    crl_path: Path
    directory_path: Path
    crl_refresh_s: float
    directory_refresh_s: float


def checked_crl(data: bytes, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """A fetched CRL, parsed and checked to be the authority's (else `IdentityError`)."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise IdentityError("the authority service sent a CRL that does not parse") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise IdentityError("the authority service sent a CRL not signed by the authority")
    return crl


class DirectoryFollower:
    """The node's side of the authority service (module docstring)."""

    def __init__(
        self,
        authority: AuthorityPort,
        settings: FollowerSettings,
        *,
        ca_cert: x509.Certificate,
        cert_pem: bytes,
        revocations: RevocationList,
        peers: PeerTable,
        own_entry: Callable[[], DirectoryEntry],
    ) -> None:
        self._authority = authority
        self._settings = settings
        self._ca_cert = ca_cert
        self._cert_pem = cert_pem
        self._revocations = revocations
        self._peers = peers
        self._own_entry = own_entry
        self.held: AcceptedDirectory | None = None

    @property
    def serial(self) -> int | None:
        return self.held.serial if self.held is not None else None

    # -- the saved directory ---------------------------------------------------------------

    def load_saved(self) -> None:
        """Start from ``DIR/directory.json``, verified like a fetched one (ignored if bad)."""
        path = self._settings.directory_path
        if not path.exists():
            return
        try:
            accepted = self._take(json.loads(path.read_bytes()), save=False)
        except (OSError, ValueError, NodeError) as exc:
            logger.error("directory: ignoring the saved %s: %s", path, exc)
            return
        self._peers.follow(accepted.entries, accepted.attested)

    def _take(self, data: Any, *, save: bool) -> AcceptedDirectory:
        accepted = accept_document(
            data,
            ca_cert=self._ca_cert,
            space=self._settings.space,
            held_serial=self.serial,
            is_revoked=self._revocations.is_revoked,
        )
        for dropped in accepted.dropped:
            logger.warning("directory: dropped entry %s: %s", dropped.member, dropped.reason)
        if save and (self.held is None or accepted.serial != self.held.serial):
            write_atomic(
                self._settings.directory_path,
                json.dumps(data, indent=1).encode() + b"\n",
                mode=0o644,
            )
        self.held = accepted
        return accepted

    # -- one step of each kind (blocking: run in a worker thread) ---------------------------

    def refresh_crl(self) -> bool:
        """Fetch the CRL; True when a newer one was written to ``crl_path``."""
        data = self._authority.crl_pem()
        fetched = checked_crl(data, self._ca_cert)
        path = self._settings.crl_path
        if path.exists():
            current = path.read_bytes()
            if current == data:
                return False
            held: x509.CertificateRevocationList | None = None
            with contextlib.suppress(IdentityError):  # a broken file of ours is replaced
                held = checked_crl(current, self._ca_cert)
            if held is not None and held.last_update_utc > fetched.last_update_utc:
                raise IdentityError("the authority service sent an older CRL; kept ours")
        write_atomic(path, data, mode=0o644)
        self._revocations.refresh()
        logger.info("directory: revocation list updated (%d revoked)", len(list(fetched)))
        return True

    def fetch_directory(self) -> AcceptedDirectory:
        """Fetch, verify and save the directory (the peer table is not touched)."""
        return self._take(self._authority.directory(), save=True)

    def refresh_directory(self) -> AcceptedDirectory:
        """Fetch the directory, hand it to the peer table, publish our entry if it lacks it."""
        accepted = self.fetch_directory()
        self._peers.follow(accepted.entries, accepted.attested)
        if self.needs_publishing(accepted):
            self.publish()
        return accepted

    def needs_publishing(self, accepted: AcceptedDirectory) -> bool:
        """Whether the directory lacks our entry as it is now."""
        mine = self._own_entry()
        listed = accepted.document.entry(mine.member_id)
        return (
            listed is None
            or listed.cert_fingerprint != mine.cert_fingerprint
            or dict(listed.endpoints) != dict(mine.endpoints)
            or listed.bpn != mine.bpn
        )

    def publish(self) -> int:
        entry = self._own_entry()
        serial = self._authority.publish(entry.to_json(), self._cert_pem)
        logger.info("directory: published our entry (peer %s), serial %d", entry.peer, serial)
        return serial

    # -- the task --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Publish, then refresh the CRL and the directory on their schedules until ``stop``."""
        loop = asyncio.get_running_loop()
        due = {"crl": loop.time(), "directory": loop.time()}
        await self._attempt("publish our entry", self.publish)
        while not stop.is_set():
            now = loop.time()
            if now >= due["crl"]:
                await self._attempt("refresh the revocation list", self.refresh_crl)
                due["crl"] = loop.time() + self._settings.crl_refresh_s
            if now >= due["directory"]:
                await self._follow_directory()
                due["directory"] = loop.time() + self._settings.directory_refresh_s
            wait = max(0.0, min(due.values()) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _follow_directory(self) -> None:
        """Fetch and verify in a worker thread; the peer table changes on the loop's own."""
        accepted = await self._attempt("refresh the directory", self.fetch_directory)
        if accepted is None:
            return
        self._peers.follow(accepted.entries, accepted.attested)
        if self.needs_publishing(accepted):
            await self._attempt("publish our entry", self.publish)

    async def _attempt(self, what: str, step: Callable[[], T]) -> T | None:
        try:
            return await asyncio.to_thread(step)
        except StaleRevocationList as exc:
            logger.error("directory: cannot %s: %s", what, exc)
        except (NodeError, OSError, ValueError) as exc:
            logger.warning("directory: cannot %s: %s", what, exc)
        return None
