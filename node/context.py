"""What a running node is made of, built once and passed to every adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qdspace.connector.storage import QualityStore
from qdspace.node.config import NodeSettings
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.runtime.contracts import ContractRuntime, build_runtime
from qdspace.node.runtime.peers import PeerDirectory


@dataclass
class NodeContext:
    settings: NodeSettings
    keys: MemberKeys
    revocations: RevocationList
    store: QualityStore
    peers: PeerDirectory
    operator_token: str
    extras: dict[str, object] = field(default_factory=dict)
    contracts: ContractRuntime | None = None

    @property
    def directory(self) -> Path:
        return self.settings.directory

    def close(self) -> None:
        self.store.close()


def build_context(settings: NodeSettings) -> NodeContext:
    """Load keys, revocation list and the store; every failure names its file or URL."""
    from qdspace.connector.storage import open_store
    from qdspace.node.identity.files import read_file

    keys = load_member_keys(settings.directory)
    revocations = RevocationList(keys.ca_cert, settings.crl_path)
    token = read_file(settings.operator_token_path, "operator token").decode().strip()
    store = open_store(settings.database_url)
    peers = PeerDirectory(keys, settings.peers)
    contracts = build_runtime(settings.directory, keys.identity, keys.signing_key, store.engine)
    return NodeContext(settings, keys, revocations, store, peers, token, contracts=contracts)
