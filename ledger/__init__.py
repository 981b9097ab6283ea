"""The ledger room: Merkle batching, the EVM anchor contract, its client, proofs and verifiers.

The ledger deals only in leaves (bytes, a small integer kind and an opaque reference id);
what a leaf means (an agreement, a deletion receipt, a record batch) is the caller's business.
"""
