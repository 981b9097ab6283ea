"""The authority as a service: ``qdspace authority serve`` over HTTPS.

A data space run by one company used to need the authority's CA key on every member's
disk (``node init --authority DIR``) and a copied CRL file. This package serves what
members need from the authority over the network instead: the CA certificate, the
revocation list, enrollment by code and CSR (the member's private keys never leave its
machine), renewal, and the signed member directory nodes find each other through.

``service`` holds the state (the loaded authority, its directory) behind one lock,
``attempts`` the budgets of refused attempts per caller address and network, ``app`` is
the thin FastAPI adapter, ``forwarded`` reads a caller's address from the X-Forwarded-For
of proxies the operator trusts (none by default), ``server`` runs it under uvicorn with
TLS, ``tls`` issues the service's own certificate from the CA, and ``client`` is what
nodes and the CLI call it with (httpx; no server stack).
"""
