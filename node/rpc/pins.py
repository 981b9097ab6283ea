"""Outgoing calls check the peer's certificate: against its directory entry (pinning)
and against the authority's revocation list.

TLS already proves that the peer holds a certificate the authority issued for the name
we called. The directory says more: *which* certificate that member uses now. An old
certificate of the same member (before a renewal, from a stolen backup) still chains
to the authority until it expires or is revoked, and a peer presenting it is refused.

grpc-python has no hook to inspect the server certificate of a channel, so before the
first call to an address the node makes one TLS handshake of its own (`ssl`, with its
member certificate as a client certificate, ALPN h2, the peer's member name as the
server name), reads the certificate the peer presents, and compares its sha256 with the
entry's ``cert_fingerprint``. A match is remembered per (address, fingerprint), so a
peer is checked again when its entry or address changes, not on every call. What was
seen at an address is remembered too, but a refusal is decided on a fresh handshake
where one completes: a member that renews its certificate keeps its address, and the
peers that called it before would otherwise refuse its new certificate (the one its
entry now names) until they restarted. A mismatch fails the call with UNAUTHENTICATED,
like any refused peer call, and is logged. A handshake that cannot complete (peer down,
TLS refused, a connection dropped) fails closed: the call is not made, UNAVAILABLE
(retryable) naming the peer, and the check runs again on the next call. Letting it go
ahead "on its own terms" let a peer that drops only the checker's connections receive
every call unchecked (a revoked static peer, or an old certificate while its entry pins
the new one). A refusal remembered from an earlier handshake is never downgraded either:
when the fresh handshake fails, a revoked serial is refused as revoked, a certificate
other than the pinned one as UNAVAILABLE (it may have been renewed since).

What remains: the check runs on a connection of its own, not on the one the call then
uses (grpc-python does not show a channel's peer certificate), and later calls to a
checked address are decided on what was seen there. A peer that tells the two apart
can present the pinned certificate to the checker and another to the calls. TLS still
holds the call's certificate to the authority and to the member name called, so this
takes a second valid certificate of that member (an old one not revoked yet: revoking
it, as a renewal after a loss should, closes it), and it cannot pass off a revoked one
to the checker.

The same handshake tells the member id in the certificate the peer presents, which
`presented_member` gives a caller that must reach one member and not merely whoever holds
its name now (the outbox's notifications, `node.rpc.peers.PeerDirectory.confirm_member`),
and its serial, so a member the authority revoked is refused on the way out too, not only
when it calls in: a node with static peers (no directory to drop the member from) would
otherwise keep delivering its outbox to a revoked member. The serial is looked up in the
revocation list on every call (a set lookup), so a revocation takes effect with the next
CRL refresh, and a stale list refuses outgoing calls as it refuses incoming ones
(UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
from cryptography import x509

from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import identity_of
from qdspace.node.identity.directory import FingerprintMismatch
from qdspace.node.identity.keyfiles import transient_key_file
from qdspace.node.identity.member import MemberKeys
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.node.rpc.observe import with_request_id
from qdspace.util.urls import split_host_port

logger = logging.getLogger("node.rpc")

HANDSHAKE_TIMEOUT_S = 5.0


def client_context(keys: MemberKeys, cert_files: tuple[Path, Path] | None) -> ssl.SSLContext:
    """TLS as the gRPC channel does it: the authority as the only root, our member cert
    (from ``cert_files``, or, without them, from the keys in memory: a managed host's
    tenant has no plaintext key file to give)."""
    context = ssl.create_default_context(cadata=keys.ca_pem.decode())
    if cert_files is not None:
        context.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    else:
        load_chain_in_memory(context, keys)
    context.set_alpn_protocols(["h2"])
    return context


def load_chain_in_memory(context: ssl.SSLContext, keys: MemberKeys) -> None:
    """Give ``context`` the member's certificate and key without a plaintext key file
    (`identity.keyfiles.transient_key_file`)."""
    with transient_key_file(keys.cert_pem, keys.tls_key) as (cert, key, password):
        context.load_cert_chain(cert, key, password=password)


class PeerRevoked(IdentityError):
    """The peer we are about to call presents a certificate the authority revoked."""


class PeerUnchecked(IdentityError):
    """The peer's certificate must be checked before a call (a revocation list or a pin
    applies) and no handshake completed to check it: the call is not made (UNAVAILABLE,
    retryable)."""


async def presented_certificate(
    context: ssl.SSLContext, address: str, peer_name: str, timeout: float = HANDSHAKE_TIMEOUT_S
) -> bytes | None:
    """DER of the certificate the peer at ``address`` presents; None if no handshake."""
    host, port = split_host_port(address)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=peer_name),
            timeout,
        )
    except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
        logger.debug("pin check of %s at %s: no handshake (%s)", peer_name, address, exc)
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        # abort, not close: a TLS close waits for the peer's close_notify, which a gRPC
        # server that got no HTTP/2 preface does not hurry to send (asyncio waits 30 s)
        writer.transport.abort()
    return bytes(der) if der else None


class PinChecker:
    """Checks the certificate a peer presents: its fingerprint against the one its entry
    names (once per pair), its serial against the revocation list (every call). What the
    peer at an address presented is remembered; a refusal is decided on a handshake made
    for it (the peer may have renewed its certificate since, at the same address), and
    where none completes the call is refused all the same (module docstring)."""

    def __init__(
        self,
        keys: MemberKeys,
        cert_files: tuple[Path, Path] | None,
        revoked: Callable[[int], bool] | None = None,
    ) -> None:
        self._keys = keys
        self._cert_files = cert_files
        self._revoked = revoked
        self._context: ssl.SSLContext | None = None
        self._verified: set[tuple[str, str]] = set()
        #: address -> (sha256, serial) of the certificate seen there
        self._seen: dict[str, tuple[str, int]] = {}
        #: address -> the member id in the certificate seen there ("" when it names none)
        self._members: dict[str, str] = {}

    def forget(self, address: str) -> None:
        self._verified = {pair for pair in self._verified if pair[0] != address}
        self._seen.pop(address, None)
        self._members.pop(address, None)

    async def _presented(self, peer_name: str, address: str) -> tuple[str, int] | None:
        if address in self._seen:
            return self._seen[address]
        if self._context is None:
            self._context = client_context(self._keys, self._cert_files)
        der = await presented_certificate(self._context, address, peer_name)
        if der is None:
            return None
        cert = x509.load_der_x509_certificate(der)
        seen = (hashlib.sha256(der).hexdigest(), cert.serial_number)
        try:
            self._members[address] = identity_of(cert).member_id
        except IdentityError:  # chains to the space's CA, yet carries no member identity
            self._members[address] = ""
        self._seen[address] = seen
        return seen

    def _refuses(self, seen: tuple[str, int], expected: str | None) -> bool:
        presented, serial = seen
        revoked = self._revoked is not None and self._revoked(serial)
        return revoked or (expected is not None and presented != expected)

    async def presented_member(self, peer_name: str, address: str) -> str | None:
        """The member id in the certificate the peer at ``address`` presents now ("" for a
        certificate that names none); None when no handshake completed (undecided). A
        handshake of its own each time (what is remembered of the address is renewed): a
        caller asks before it hands a member what is for that member alone, and the
        server at an address can change hands between two such messages."""
        self._seen.pop(address, None)
        if await self._presented(peer_name, address) is None:
            return None
        return self._members.get(address, "")

    async def check(self, peer_name: str, address: str, expected: str | None) -> None:
        """Raise `FingerprintMismatch` when the peer presents another cert than ``expected``
        (None: a static peer the directory does not list), `PeerRevoked` when its cert is
        revoked, `StaleRevocationList` when the list is past its nextUpdate, `PeerUnchecked`
        when a check applies and no handshake completed to decide it (the call is not
        made: fail closed)."""
        if self._revoked is None and (expected is None or (address, expected) in self._verified):
            return
        remembered = address in self._seen
        seen = await self._presented(peer_name, address)
        if seen is not None and remembered and self._refuses(seen, expected):
            # what was seen here before may be a certificate the peer has since replaced
            # (a renewal keeps the address): a refusal is decided on a fresh handshake,
            # and stands when none completes (never downgraded to "undecided")
            self._seen.pop(address, None)
            fresh = await self._presented(peer_name, address)
            if fresh is None:
                self._seen[address] = seen  # looked at afresh on the next call again
                self._refuse_remembered(peer_name, address, seen)
            seen = fresh
        if seen is None:
            logger.info(
                "not calling %s at %s: no TLS handshake completed to check its certificate",
                peer_name,
                address,
            )
            raise PeerUnchecked(
                f"peer {peer_name} at {address}: no TLS handshake completed to check its "
                "certificate (revocation, directory pin); not called, try again later"
            )
        self._decide(peer_name, address, seen, expected)

    def _refuse_remembered(self, peer_name: str, address: str, seen: tuple[str, int]) -> NoReturn:
        """What was seen at ``address`` before refuses the call and no fresh handshake
        completed: a revoked serial stays revoked (`PeerRevoked`); another certificate
        than the entry names may have been renewed since, so it is `PeerUnchecked`
        (retryable), never a call made unchecked."""
        presented, serial = seen
        if self._revoked is not None and self._revoked(serial):
            self._decide(peer_name, address, seen, None)
        logger.info(
            "not calling %s at %s: it presented certificate sha256 %s before, not the one its "
            "entry names, and no fresh handshake completed",
            peer_name,
            address,
            presented,
        )
        raise PeerUnchecked(
            f"peer {peer_name} at {address} presented another certificate than its directory "
            "entry names, and no TLS handshake completed to check it again; not called"
        )

    def _decide(
        self, peer_name: str, address: str, seen: tuple[str, int], expected: str | None
    ) -> None:
        """Refuse (raise) the certificate ``seen`` at ``address`` when it is revoked or is
        not ``expected``; remember the match otherwise."""
        presented, serial = seen
        if self._revoked is not None and self._revoked(serial):
            logger.warning(
                "refusing to call %s at %s: its certificate (serial %x) is revoked",
                peer_name,
                address,
                serial,
            )
            raise PeerRevoked(
                f"peer {peer_name} at {address} presents a revoked certificate (serial {serial:x})"
            )
        if expected is None or (address, expected) in self._verified:
            return
        if presented != expected:
            logger.warning(
                "refusing peer %s at %s: it presents certificate sha256 %s, its directory "
                "entry names %s",
                peer_name,
                address,
                presented,
                expected,
            )
            raise FingerprintMismatch(
                f"peer {peer_name} at {address} presents certificate sha256 {presented[:16]}..., "
                f"not the one its directory entry names ({expected[:16]}...)"
            )
        self._verified.add((address, expected))


Expected = Callable[[], str | None]


def _refusal(exc: IdentityError) -> grpc.aio.AioRpcError:
    code = (
        grpc.StatusCode.UNAVAILABLE
        if isinstance(exc, StaleRevocationList | PeerUnchecked)
        else grpc.StatusCode.UNAUTHENTICATED
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), str(exc))


class _Pinned:
    def __init__(self, checker: PinChecker, peer_name: str, address: str, expected: Expected):
        self._checker, self._name, self._address, self._expected = (
            checker,
            peer_name,
            address,
            expected,
        )

    async def _check(self) -> None:
        try:
            await self._checker.check(self._name, self._address, self._expected())
        except (FingerprintMismatch, PeerRevoked, PeerUnchecked, StaleRevocationList) as exc:
            raise _refusal(exc) from None


class _UnaryUnary(_Pinned, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        await self._check()
        return await continuation(with_request_id(details), request)


class _UnaryStream(_Pinned, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        await self._check()
        return await continuation(with_request_id(details), request)


class _StreamUnary(_Pinned, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        await self._check()
        return await continuation(with_request_id(details), requests)


class _StreamStream(_Pinned, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        await self._check()
        return await continuation(with_request_id(details), requests)


def pin_interceptors(
    checker: PinChecker, peer_name: str, address: str, expected: Expected
) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that check the pin before each call (cached once it matched)
    and send the current request id with it, as `node.rpc.observe`'s interceptors do: a
    grpc.aio interceptor costs a coroutine level and its own call object per call, so a
    pinned call runs one instead of two (bench/PROFILE-negotiation.md, round 5)."""
    return [
        cls(checker, peer_name, address, expected)
        for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
