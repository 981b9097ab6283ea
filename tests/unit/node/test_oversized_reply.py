"""A peer's RESOURCE_EXHAUSTED is read as our own refusal of its oversized reply only
when its text names a limit of ours and a size past it (`node.rpc.client.oversized_reply`):
its details are the peer's words. A text of 5,000 nines made ``int`` raise ValueError out
of the call (a 400 to our own caller)."""

from __future__ import annotations

import grpc
import pytest

from qdspace.node.rpc.client import TRACE_REPLY_BYTES, oversized_reply


def _error(
    details: str, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    "details",
    [
        f"Received message larger than max ({'9' * 5000} vs. 1)",
        "Received message larger than max (25165825 vs. 1234)",  # no limit of ours
        f"Received message larger than max (10 vs. {TRACE_REPLY_BYTES})",  # within it
        "over the peer's quota",
    ],
)
def test_the_peers_own_words_are_not_our_refusal(details: str) -> None:
    assert oversized_reply(_error(details)) is None


def test_our_refusal_of_an_oversized_reply_is_read() -> None:
    text = f"Received message larger than max ({TRACE_REPLY_BYTES + 1} vs. {TRACE_REPLY_BYTES})"
    assert oversized_reply(_error(text)) == (TRACE_REPLY_BYTES + 1, TRACE_REPLY_BYTES)
    assert oversized_reply(_error(text, grpc.StatusCode.INTERNAL)) is None
