"""A managed host: one process serving many members (tenants) for those without servers.

A testing and certification house hosts quality data for small suppliers: each tenant is
an ordinary member of the data space (its own member id, certificate, signing key,
database, contract store and operator token) whose node directory lives under
``HOST/tenants/<name>/`` with its private key files encrypted at rest (`sealing`). One
process (`runtime`) serves every tenant in one event loop: a peer gRPC server per tenant
on its own port (`qdspace.node.serving.MemberServer`, exactly what a self-hosted node
runs, so peers cannot tell the difference) and one HTTPS operator listener for all,
where the bearer token picks the tenant's operator API (`dispatch`).

Modules: `errors`, `names` (tenant names), `sealing` (per-tenant data keys under the host
master key), `layout` and `settings` (the host directory), `registry` (tenants and their
state), `tenants` (``host init`` and ``host tenant add``), `dispatch` (the operator
listener's ASGI dispatcher and the host-management app), `runtime` (``host start``),
`export` (``tenant export``: a standalone node directory) and `leaving` (``tenant remove``:
purge, deliver the receipts, delete).
"""
