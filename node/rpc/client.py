"""Outgoing peer calls: one mTLS channel per peer, verified against the authority.

The channel checks that the server's certificate names the peer we meant to reach
(``ssl_target_name_override`` = the peer's member name), so a member cannot answer
for another even with a valid certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from qdspace.node.identity.member import MemberKeys

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]


def channel_credentials(keys: MemberKeys) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=keys.ca_pem,
        private_key=keys.tls_key_pem,
        certificate_chain=keys.cert_pem,
    )


def open_channel(
    keys: MemberKeys,
    address: str,
    peer_name: str,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An aio channel to ``address`` that only accepts the member called ``peer_name``
    (``interceptors``, when given, send the request id themselves: `node.rpc.pins`'
    check the peer's certificate against its directory entry and add the id in one
    interceptor per call; without them, `node.rpc.observe`'s send it)."""
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", peer_name)]
    from qdspace.node.rpc.observe import request_id_interceptors

    return grpc.aio.secure_channel(
        address,
        channel_credentials(keys),
        options=options,
        # the caller's request id goes with the call
        interceptors=list(interceptors) or request_id_interceptors(),
    )
