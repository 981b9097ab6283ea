"""A client-streaming call (an upload: Federation/UploadUpdate, UploadMasked, StartJob) of
a member revoked while it is open is refused: UNAUTHENTICATED "revoked", and the
servicer's work never completes. Before, such calls went through the plain unary gate
with no re-check: the revoked member kept streaming and its upload was accepted, and an
upload it left open waited for the member's own deadline.

A real gRPC server with mutual TLS and the node's `AuthInterceptor` in front of an
upload method of the node's own name (the servicer stands in for the federation's, which
would need a job and its rounds set up to accept an upload)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.rpc.auth import AuthInterceptor, PeerAuthenticator
from qdspace.node.rpc.client import channel_credentials

pytestmark = pytest.mark.integration

SERVICE = "qdspace.v1.Federation"
METHOD = f"/{SERVICE}/UploadUpdate"
RECHECK_S = 0.2
GENEROUS_S = 60.0  # a deadline for events, never a duration asserted


class _Upload:
    """The servicer side: the chunks it read and whether it accepted the upload."""

    def __init__(self, swallow: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.first = asyncio.Event()
        self.accepted = False
        self._swallow = swallow  # a servicer that takes any read error for the end

    async def __call__(self, requests: AsyncIterator[bytes], _: object) -> bytes:
        try:
            async for chunk in requests:
                self.chunks.append(chunk)
                self.first.set()
        except Exception:
            if not self._swallow:
                raise
        self.accepted = True
        return b"accepted %d" % len(self.chunks)


async def _serve(
    me: MemberKeys, crl: RevocationList, upload: _Upload
) -> tuple[grpc.aio.Server, int]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"UploadUpdate": grpc.stream_unary_rpc_method_handler(upload)}
    )
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(PeerAuthenticator(crl), recheck_s=RECHECK_S)]
    )
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(me.tls_key_pem, me.cert_pem)], root_certificates=me.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


Chunks = Callable[[Authority, _Upload], AsyncIterator[bytes]]


def _upload_of_revoked(tmp_path: Path, chunks: Chunks, upload: _Upload) -> grpc.aio.AioRpcError:
    """``evil`` uploads ``chunks`` (which revoke it along the way) to ``me``: the error
    the call ended with (``upload`` keeps what the servicer saw)."""
    authority = Authority.init(tmp_path / "authority", "upload-space")
    me = create_member_keys(tmp_path / "me", authority, name="me", role="oem")
    evil = create_member_keys(tmp_path / "evil", authority, name="evil", role="supplier")
    crl = RevocationList(authority.cert, authority.files.crl)

    async def scenario() -> grpc.aio.AioRpcError:
        server, port = await _serve(me, crl, upload)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            channel_credentials(evil),
            options=[("grpc.ssl_target_name_override", "me")],
        )
        try:
            call = channel.stream_unary(METHOD)(timeout=GENEROUS_S)

            async def feed() -> None:
                # written one by one, not as a request iterator: a write racing the
                # server's refusal then fails here, and the call still ends with the
                # server's status (an iterator's failed send ended the call INTERNAL)
                async for chunk in chunks(authority, upload):
                    if call.done():
                        return
                    try:
                        await call.write(chunk)
                    except Exception:  # the call ended meanwhile: its status says why
                        return
                with contextlib.suppress(Exception):
                    await call.done_writing()

            feeder = asyncio.create_task(feed())
            try:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            return failed.value
        finally:
            await channel.close()
            await server.stop(None)

    return asyncio.run(scenario())


async def _until_refused(authority: Authority, upload: _Upload) -> AsyncIterator[bytes]:
    """A chunk; the member revoked once the servicer read it; then chunks until the call
    ends, up to ``GENEROUS_S / 3`` seconds' worth (an upload never refused ends within
    the call's deadline and is accepted)."""
    yield b"chunk-0"
    await asyncio.wait_for(upload.first.wait(), GENEROUS_S)
    authority.revoke("evil", "went rogue")
    for i in range(1, int(GENEROUS_S / 3 / 0.05)):
        await asyncio.sleep(0.05)
        yield b"chunk-%d" % i


async def _then_silent(authority: Authority, upload: _Upload) -> AsyncIterator[bytes]:
    """A chunk; the member revoked once the servicer read it; then nothing more, the
    upload held open (until the call ends or the client's deadline)."""
    yield b"chunk-0"
    await asyncio.wait_for(upload.first.wait(), GENEROUS_S)
    authority.revoke("evil", "went rogue")
    await asyncio.sleep(GENEROUS_S * 2)


def test_a_member_revoked_mid_upload_is_refused(tmp_path: Path) -> None:
    upload = _Upload()
    err = _upload_of_revoked(tmp_path, _until_refused, upload)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
    assert "revoked" in (err.details() or ""), err.details()
    assert not upload.accepted  # the servicer never got to the end of the upload


def test_an_upload_held_open_by_a_revoked_member_ends(tmp_path: Path) -> None:
    upload = _Upload()
    err = _upload_of_revoked(tmp_path, _then_silent, upload)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err  # not the client's deadline
    assert "revoked" in (err.details() or ""), err.details()
    assert not upload.accepted and upload.chunks == [b"chunk-0"]


def test_a_servicer_that_swallows_the_refusal_does_not_accept_the_upload(tmp_path: Path) -> None:
    """The refusal reaches the servicer as an error from its request iterator; one that
    takes it for the end of the upload and returns still answers the refusal."""
    err = _upload_of_revoked(tmp_path, _until_refused, _Upload(swallow=True))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
    assert "revoked" in (err.details() or ""), err.details()
