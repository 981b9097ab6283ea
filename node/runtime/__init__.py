"""The node's feature services: contracts, ledger anchoring, federation, peers.

Each module here is the runtime of one feature, named as the feature is named in
``rpc/``, ``api/``, ``cli/`` and ``demo/``. Runtime code imports no transport (no
grpc, fastapi or typer): the adapters decode a call, invoke one runtime method and
encode its answer, so the same behaviour serves every transport.
"""
