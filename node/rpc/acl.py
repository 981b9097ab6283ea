"""Which role may call which peer method. Default deny: a method not listed is refused."""

from __future__ import annotations

from collections.abc import Mapping

ALL_ROLES = frozenset({"oem", "supplier", "host", "regulator"})
TRADING = frozenset({"oem", "supplier", "host"})

METHOD_ROLES: Mapping[str, frozenset[str]] = {
    "/grpc.health.v1.Health/Check": ALL_ROLES,
    "/grpc.health.v1.Health/Watch": ALL_ROLES,
    "/qdspace.v1.Node/Hello": ALL_ROLES,
    # Genealogy is supply-chain know-how: only trading partners ask for it, and the
    # service then checks that the caller bought the batch.
    "/qdspace.v1.Trace/Upstream": TRADING,
}


def allowed_roles(method: str) -> frozenset[str]:
    return METHOD_ROLES.get(method, frozenset())
