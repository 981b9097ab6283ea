"""A hosted tenant's chain account: where its records, agreements and deletion receipts
are anchored.

A self-hosted node keeps its chain key in ``chain.key`` beside a ``ledger.json`` naming the
chain; a hosted tenant does too, with the key sealed under its data key like its other
secrets (`sealing`). `set_tenant_ledger` seals a key its operator hands over as a file
(the plain file can then be shredded) and writes the ledger settings; the host attaches
the ledger when it opens the tenant, so a change is served from the host's next start
(or the tenant's resume after a restart). Removing a tenant waits until what it queued
for anchoring is on the chain (`leaving`), since the queue lives in the tenant's
database, which removal deletes.
"""

from __future__ import annotations

from pathlib import Path

from qdspace.node.host.config import HostLayout
from qdspace.node.host.registry import Registry
from qdspace.node.host.tenants import load_master_key, tenant_key_files
from qdspace.node.layout import NodeLayout


def set_tenant_ledger(
    directory: Path, name: str, rpc_url: str, contract: str, chain_id: int, key_file: Path
) -> str:
    """Seal the chain key in ``key_file`` for tenant ``name`` and write its ledger
    settings; returns the account's address. The key is checked before anything is
    written."""
    from qdspace.ledger.keys import ChainSigner
    from qdspace.node.identity.files import read_file
    from qdspace.node.runtime.ledger import write_ledger_file

    files = HostLayout(directory.resolve())
    Registry(files.directory).get(name)  # an unknown tenant says so
    text = read_file(key_file, "chain key file").decode("ascii", errors="replace").strip()
    signer = ChainSigner.from_hex(text, source=f"chain key file {key_file}")
    key_files = tenant_key_files(files, load_master_key(files), name)
    tenant = files.tenant(name)
    key_files.write(NodeLayout(tenant).chain_key, text.encode("ascii"))
    write_ledger_file(tenant, rpc_url, contract, chain_id)
    return signer.address
