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
    "/qdspace.v1.Trace/Investigate": TRADING,
    # Usage contracts: only trading partners see catalogs, negotiate, pull and subscribe
    # (the servicers then check the agreement); a regulator never sees raw data here.
    "/qdspace.v1.Catalog/ListAssets": TRADING,
    "/qdspace.v1.Catalog/GetAsset": TRADING,
    "/qdspace.v1.Negotiation/Send": TRADING,
    "/qdspace.v1.Negotiation/Get": TRADING,
    "/qdspace.v1.Transfer/Send": TRADING,
    "/qdspace.v1.Transfer/Pull": TRADING,
    "/qdspace.v1.Subscription/Subscribe": TRADING,
    "/qdspace.v1.Notification/Notify": TRADING,
    # Federated learning: members of a job (the servicer checks membership per job);
    # StartJob is further limited to the coordinator node's own identity.
    **{
        f"/qdspace.v1.Federation/{m}": TRADING
        for m in (
            "StartJob",
            "ListJobs",
            "GetJob",
            "GetStatus",
            "DownloadModel",
            "UploadUpdate",
            "AdvertiseKeys",
            "GetRoster",
            "ShareKeys",
            "GetInbox",
            "UploadMasked",
            "GetUnmaskRequest",
            "ConfirmSurvivors",
            "Unmask",
            "ReportBadShares",
            "GetVersionProof",
        )
    },
}


def allowed_roles(method: str) -> frozenset[str]:
    return METHOD_ROLES.get(method, frozenset())
