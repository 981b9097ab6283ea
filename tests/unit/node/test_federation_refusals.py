"""How the member's client reads a coordinator's refusal from a gRPC error: the reason
prefix becomes the machine-readable ``RefusalReason``, and the status grpcio's asyncio
client loses when a server ends a stream during a write (grpc/grpc#36066) is named as
lost, never read as a reason."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from qdspace.federation.errors import RefusalReason
from qdspace.node.rpc.federation_client import LOST_STATUS_DETAILS, _refusal, status_lost


def _error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def test_a_refusal_carries_the_coordinators_reason() -> None:
    exc = _error(grpc.StatusCode.FAILED_PRECONDITION, "duplicate: masked input of cellex")
    refused = _refusal("oem", exc)
    assert refused.reason is RefusalReason.DUPLICATE
    assert refused.code == "FAILED_PRECONDITION"
    assert "coordinator oem" in str(refused) and "masked input of cellex" in str(refused)
    assert not status_lost(exc)


def test_a_status_lost_by_grpc_is_named_and_has_no_reason() -> None:
    exc = _error(grpc.StatusCode.INTERNAL, LOST_STATUS_DETAILS)
    assert status_lost(exc)
    refused = _refusal("oem", exc)
    assert refused.reason is None and refused.code == "INTERNAL"
    assert "grpc/grpc#36066" in str(refused) and "job's status" in str(refused)


def test_other_internal_errors_are_not_taken_for_a_lost_status() -> None:
    assert not status_lost(_error(grpc.StatusCode.INTERNAL, "wrong_shape: bad chunk"))
    assert not status_lost(_error(grpc.StatusCode.UNKNOWN, LOST_STATUS_DETAILS))
