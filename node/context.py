"""What a running node is made of, built once and passed to every adapter.

Every part has a typed field of its own. The optional parts are attached after the
context is built, by the module that owns them: the ledger by
``runtime.ledger.attach_ledger`` (only when ``ledger.json`` names a chain), the contract
client and outbox dispatcher by ``run.serve`` (``rpc.contracts_jobs.client_of``), the
federation anchor hook by ``run.run_node`` when the node has a ledger, the federation
member service (wired to the gRPC coordinator link) by ``run.serve``. Their types are
imported for the type checker only: building a context must not pull in the gRPC
client or the chain stack, and those modules import this one.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qdspace.connector.storage import QualityStore
from qdspace.node.config import NodeSettings
from qdspace.node.disk_room import DiskRoom, disk_room
from qdspace.node.identity.keyfiles import PLAIN, KeyFiles, PlainKeyFiles
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.layout import NodeLayout
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.access import DatasetAccess, parse_access
from qdspace.node.runtime.contracts import ContractRuntime, build_runtime

if TYPE_CHECKING:
    from qdspace.federation.job_files import VersionAnchor
    from qdspace.node.rpc.limits import CallLimiter
    from qdspace.node.runtime.contract_ports import OutboxDelivery, PeerContracts
    from qdspace.node.runtime.directory import DirectoryFollower
    from qdspace.node.runtime.federation_member import FederationMember
    from qdspace.node.runtime.ledger import NodeLedger
    from qdspace.node.runtime.trace_runs import TraceRuns


class IngestAdmission(Protocol):
    """What may be stored: a managed host's row and storage quotas (`node.host.admission`),
    or a node's free disk (`node.disk_room`).

    ``admit(rows, size)`` is held around an ingest of up to ``rows`` new rows and
    ``size`` bytes; it refuses one that could pass a quota before anything is written,
    and lets one tenant's ingests through one at a time (so racing ingests cannot both
    take the last rows of a quota). ``check_upload(size)`` refuses an upload of ``size``
    bytes as it arrives, before it is read whole or spooled (against what was stored at
    the last measure: cheap, asked every few MiB). ``check_kept(size, what)`` refuses
    ``size`` more bytes of a file the node is about to keep in its directory (a model
    version: ``what`` names it) that do not fit, before it is written. ``counts_rows``:
    whether it reads ``rows`` at all (counting an upload's lines reads it once more);
    ``disk``: the free disk it keeps."""

    @property
    def counts_rows(self) -> bool: ...

    @property
    def disk(self) -> DiskRoom | None:
        """The free disk it keeps (`node.disk_room`), if it checks one."""
        ...

    def admit(self, rows: int, size: int) -> AbstractAsyncContextManager[None]: ...

    def check_upload(self, size: int) -> None: ...

    def check_kept(self, size: int, what: str) -> None: ...


@dataclass
class NodeContext:
    settings: NodeSettings
    keys: MemberKeys
    revocations: RevocationList
    store: QualityStore
    peers: PeerDirectory
    operator_token: str
    contracts: ContractRuntime | None = None
    #: the node's anchoring queue and threads; None when it anchors to no chain
    ledger: NodeLedger | None = None
    #: the consumer side of the contract services (made on first use)
    contract_client: PeerContracts | None = None
    #: delivers the contract outbox to peers (made with ``contract_client``)
    outbox: OutboxDelivery | None = None
    #: the DSP binding's consumer side (`node.dsp.consumer.DspConsumer`), when it listens
    dsp: Any = None
    #: the DSP binding's transfers (`node.dsp.transfer_consumer.DspTransfers`), when it listens
    dsp_transfers: Any = None
    #: the host:port of the DSP listener published in the member directory, when it has one
    dsp_endpoint: str | None = None
    #: anchors each global model version this node coordinates; None without a ledger
    anchor_version: VersionAnchor | None = None
    #: follows federated jobs as this member, starts and reads jobs (the operator's ``fl``)
    federation: FederationMember | None = None
    #: follows the authority service's CRL and member directory; None without one
    follower: DirectoryFollower | None = None
    #: the node's own Prometheus registry and metrics (``node.metrics``)
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    #: True once both listeners (gRPC and API) are up; ``/startupz`` reads it
    serving: bool = False
    #: the OEM's side of root-cause traces (made with the peer server); None without contracts
    traces: TraceRuns | None = None
    #: how the node's secret files are read (plain files; a managed host's decrypt them)
    key_files: KeyFiles = PLAIN
    #: a managed host's row and storage quotas of this tenant, or a node's free disk
    #: (`node.disk_room`); None: nothing to check (on PostgreSQL, or the check off)
    ingest_admission: IngestAdmission | None = None
    #: where a caller may name files (`node.api.caller_paths`): None on a node of its own,
    #: a hosted tenant's own files folder on a managed host
    caller_files: Path | None = None
    #: members' calls and streams in flight here: one count for the gRPC and the DSP
    #: listener (`node.serving.call_limiter`), made with the first of them
    calls: CallLimiter | None = None

    @property
    def directory(self) -> Path:
        return self.settings.directory

    @property
    def disk(self) -> DiskRoom | None:
        """The free disk the node keeps (`node.disk_room`), if it checks one."""
        admission = self.ingest_admission
        return admission.disk if admission is not None else None

    @property
    def layout(self) -> NodeLayout:
        """The paths of the node's directory."""
        return self.settings.layout

    def check_kept(self, size: int, what: str) -> None:
        """Refuse a file of ``size`` bytes the node is about to keep in its directory (a
        model version, a coordinator's checkpoint; ``what`` names it in the refusal)
        that does not fit, before a byte of it is written: the free disk a node keeps
        (`DiskLow`), or a hosted tenant's storage quota, which counts those files
        (`node.host.admission`; `StorageQuotaExceeded` naming the tenant, what it holds
        and its quota). Nothing to check (None admission): it passes. Blocking (a
        tenant's usage may be measured): call it from a worker thread."""
        if self.ingest_admission is not None:
            self.ingest_admission.check_kept(size, what)

    def close(self) -> None:
        self.store.close()


def build_context(settings: NodeSettings, key_files: KeyFiles = PLAIN) -> NodeContext:
    """Load keys, revocation list and the store; every failure names its file or URL.
    The secret files are read through ``key_files`` (`identity.keyfiles`)."""

    keys = load_member_keys(settings.directory, key_files=key_files)
    revocations = RevocationList(keys.ca_cert, settings.crl_path)
    token = key_files.read(settings.operator_token_path, "operator token").decode().strip()
    store = settings.open_store()
    layout = settings.layout
    # the pin check's TLS handshake loads the key from its file; a sealed file (a hosted
    # tenant's) is not PEM, so its key goes from memory (`rpc.pins.client_context`)
    plain = isinstance(key_files, PlainKeyFiles)
    peers = PeerDirectory(
        keys,
        settings.peers,
        cert_files=(layout.tls_cert, layout.tls_key) if plain else None,
        revoked=revocations.is_revoked,  # calls out are refused to revoked members too
    )
    try:
        contracts = build_runtime(
            settings.directory,
            keys.identity,
            keys.signing_key,
            store.engine,
            key_files,
            settings.offer_choices(),
        )
    except BaseException:
        store.close()
        raise
    # who may see which dataset, on the caller's attested facts (both bindings ask it)
    contracts.access = DatasetAccess(
        parse_access(settings.dsp_access), peers.attested_bpn, peers.attested_frameworks
    )
    contracts.negotiations_per_hour = settings.negotiations_per_member_hour
    contracts.transfers_per_hour = settings.transfers_per_member_hour
    contracts.cases_per_hour = settings.cases_per_member_hour
    contracts.case_bytes_per_member = settings.case_bytes_per_member
    room = disk_room(store.engine, settings.min_free_disk_mib)
    contracts.received_room = room  # a managed host puts its tenant's quotas here instead
    return NodeContext(
        settings,
        keys,
        revocations,
        store,
        peers,
        token,
        contracts=contracts,
        key_files=key_files,
        ingest_admission=room,
    )
