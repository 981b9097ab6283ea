"""Outgoing peer calls: one mTLS channel per peer, verified against the authority.

The channel checks that the server's certificate names the peer we meant to reach
(``ssl_target_name_override`` = the peer's member name), so a member cannot answer
for another even with a valid certificate.

A reply is read up to the channel's 64 MiB, except where a method's replies are known
to be smaller (`REPLY_LIMITS`): a producer's ``Trace/Investigate`` answer is bounded by
`connector.trace`'s totals and a provider's catalog by `node.rpc.contracts_serde`'s, and
a reply beyond them would only be refused after it was read and parsed
(`node.rpc.trace_client`; 60 MiB of catalog held a consumer's event loop 18 s). gRPC
python sets a receive limit per channel, not per call, so these limits go in the
channel's service config (``methodConfig`` / ``maxResponseMessageBytes``, which gRPC
applies on top of the channel's limit): the method's calls keep the peer's one cached
channel (its TLS connection and its pin checks), and gRPC refuses a larger reply on its
length prefix (RESOURCE_EXHAUSTED, "Received message larger than max"), before
buffering it. Service configs a resolver might publish (DNS TXT records) are not taken,
so nobody outside can lift them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import grpc

from qdspace.node.identity.member import MemberKeys

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]
#: the largest ``Trace/Investigate`` reply read: an honest answer at every bound of
#: `connector.trace` encodes to 20,831,026 bytes (`node.rpc.trace_client` says how it
#: was measured and what the margin is for)
TRACE_REPLY_BYTES = 22 * 1024 * 1024
#: a provider's whole catalog, and one asset of it: `MAX_CATALOG_ASSETS` assets at ~1-4 KB
#: honestly (`node.rpc.contracts_serde`), an asset with an offer of `MAX_OFFER_BYTES` and
#: every text at its bound under 80 KB
CATALOG_REPLY_BYTES = 4 * 1024 * 1024
ASSET_REPLY_BYTES = 128 * 1024
#: (service, method) -> the largest reply read, below the channel's limit
REPLY_LIMITS = {
    ("qdspace.v1.Trace", "Investigate"): TRACE_REPLY_BYTES,
    ("qdspace.v1.Catalog", "ListAssets"): CATALOG_REPLY_BYTES,
    ("qdspace.v1.Catalog", "GetAsset"): ASSET_REPLY_BYTES,
}


#: how gRPC words a reply refused for its size ("... (25165825 vs. 23068672)"); the
#: numbers are bounded: the text may be a peer's own (a status it sent), and ``int`` of
#: over 4,300 digits raised ValueError out of the call
_TOO_LARGE = re.compile(r"larger than max \((\d{1,12}) vs\. (\d{1,12})\)")
#: the limits our side refuses replies at: the only ones such a text can be ours about
_OUR_LIMITS = frozenset(
    {*REPLY_LIMITS.values(), dict(CHANNEL_OPTIONS)["grpc.max_receive_message_length"]}
)


def oversized_reply(exc: grpc.aio.AioRpcError) -> tuple[int, int] | None:
    """(size, limit) when our side's gRPC refused the reply for its size: the peer sent
    more than `REPLY_LIMITS` allow (its fault, a 502; not the peer's own RESOURCE_EXHAUSTED,
    a quota that a retry may pass). A text naming a limit that is none of ours, or a size
    within it, is the peer's own words, not our refusal."""
    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    found = _TOO_LARGE.search(exc.details() or "")
    if found is None:
        return None
    size, limit = int(found[1]), int(found[2])
    return (size, limit) if limit in _OUR_LIMITS and size > limit else None


def service_config(limits: dict[tuple[str, str], int]) -> str:
    """The channel's service config (JSON): each method's reply limit."""
    methods = [
        {"name": [{"service": service, "method": method}], "maxResponseMessageBytes": limit}
        for (service, method), limit in sorted(limits.items())
    ]
    return json.dumps({"methodConfig": methods})


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
    options = [
        *CHANNEL_OPTIONS,
        ("grpc.ssl_target_name_override", peer_name),
        ("grpc.service_config", service_config(REPLY_LIMITS)),
        ("grpc.service_config_disable_resolution", 1),
    ]
    from qdspace.node.rpc.observe import request_id_interceptors

    return grpc.aio.secure_channel(
        address,
        channel_credentials(keys),
        options=options,
        # the caller's request id goes with the call
        interceptors=list(interceptors) or request_id_interceptors(),
    )
