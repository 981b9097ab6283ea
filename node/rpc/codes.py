"""gRPC status codes of domain errors, read from the node's one fault table.

`qdspace.node.faults` holds each error's status as a ``grpc.StatusCode`` name so that it
stays free of grpc; this is the one place that turns the name into the code.
"""

from __future__ import annotations

import grpc

from qdspace.node import faults


def status_code(
    error: faults.ErrorOrClass, default: grpc.StatusCode = grpc.StatusCode.INTERNAL
) -> grpc.StatusCode:
    """The status ``error`` (an instance or a class) answers a peer with; ``default`` when
    the table has no gRPC opinion on it."""
    name = faults.grpc_status_name(error)
    return default if name is None else grpc.StatusCode[name]
