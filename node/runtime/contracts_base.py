"""What every contract move of a node reads: its keys, clock, assets and stores.

`ContractBase` holds the state the provider's moves share (the member identity and
signing key, the contract store, the QDM database, the clock, the pseudonym secret and
the catalog's assets) and the catalog questions every move asks (which asset, whose
orders). The moves themselves live in rooms of their own (negotiation, transfers and
streams, notifications and closures), each a mixin over this base, and
`qdspace.node.runtime.contracts.ContractRuntime` joins them into the one object the
composition root builds. Keeping the shared state here lets each room import it without
importing the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from nacl.signing import SigningKey, VerifyKey
from sqlalchemy import Engine

from qdspace.connector import held_connection
from qdspace.connector.assets import Asset, CatalogEntry, catalog
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store import ContractStore, StoredAgreement
from qdspace.connector.contract_store.common import DriverStatement
from qdspace.connector.contract_store.transfer_acts import TransferActs
from qdspace.connector.negotiation import Role
from qdspace.connector.qdm import Order
from qdspace.connector.spc import Investigation
from qdspace.node.config import DEFAULT_NEGOTIATIONS_PER_HOUR, DEFAULT_TRANSFERS_PER_HOUR
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import peer_name
from qdspace.node.runtime.access import DatasetAccess
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.node.runtime.table_watch import TableWatch
from qdspace.policies.model import Policy

logger = logging.getLogger("node.contracts")
#: straight to the driver: SQLAlchemy's per-execution machinery costs more than the query on
#: SQLite, and a provider asks on every request it decides (bench/PROFILE-negotiation.md,
#: rounds 2 and 5); a read, so the QDM engine's write watch (`TableWatch`) has nothing to see
_ORDERS = Order.__table__  # type: ignore[attr-defined]
_CUSTOMER_ORDERS = DriverStatement(
    f"SELECT order_id FROM {_ORDERS.name} WHERE customer = ?",
    [_ORDERS.c.customer.type],
    [_ORDERS.c.order_id.type],
)


#: the window of the per-member quotas
QUOTA_WINDOW = timedelta(hours=1)


def over_quota(member_id: str, what: str, opened: int, setting: str, cap: int) -> str | None:
    """Why a member that opened `opened` processes of a kind (`what`) within the hour may
    open no more, or None while it is under `cap`.

    Negotiations and transfers are rows written on a member's initiative (a transfer's
    with the history of its messages, a DSP process's with an answer queued for the
    callback): uncapped, one member could fill the provider's database at the speed of
    its calls. Each is counted and opened under the member's lock (`opening`), so
    requests sent side by side cannot all pass the count before any is written."""
    if opened < cap:
        return None
    return (
        f"member {member_id} opened {opened} {what} here within the hour, as many as this "
        f"node takes from one member ({setting} {cap}): ask again once the hour's first "
        "has aged out"
    )


class GateRecheck:
    """When a stream releasing rows under an agreement (a pull, a live subscription, a DSP
    live stream) must build its gate again: every `every_s` seconds (an expiry, an order
    closed or no longer the consumer's), and at once after a termination made in this
    process (`ContractStore.terminations`), so that nothing more than the batch in hand
    leaves after it."""

    def __init__(self, store: ContractStore, every_s: float) -> None:
        self._store = store
        self._every_s = every_s
        self._at = time.monotonic()
        self._ended = store.terminations

    def due(self) -> bool:
        """Whether the gate is to be built again now (the terminations seen are taken
        as checked: call `rebuilt` once it is)."""
        ended = self._store.terminations
        if time.monotonic() - self._at < self._every_s and ended == self._ended:
            return False
        self._ended = ended
        return True

    def rebuilt(self) -> None:
        """The gate was built again: the next check is `every_s` from now."""
        self._at = time.monotonic()


class ReceivedRoom(Protocol):
    """Whether what members send may be kept here: a managed host's row and storage
    quotas of its tenant (`node.host.admission.TenantAdmission`), or a node's free disk
    (`node.disk_room.DiskRoom`)."""

    def receive(self, rows: int, size: int) -> AbstractContextManager[None]:
        """Held around the write of ``rows`` rows and ``size`` bytes a provider sent
        (counted as in flight until it ends); refuses (raises) one that does not fit.
        Blocking: entered in the worker thread that writes them."""
        ...

    def check_kept(self, size: int, what: str) -> None:
        """Refuse (raise) ``size`` more bytes of ``what`` (quality case data: a peer's, or
        our own staff's) that do not fit, against what was kept at the last measure."""
        ...


@dataclass
class ContractBase:
    """The state and catalog shared by the contract moves; see the module docstring."""

    me: MemberIdentity
    signing_key: SigningKey
    store: ContractStore
    qdm: Engine
    clock: ContractClock
    pseudonym_secret: bytes
    assets: dict[str, Asset]
    # (kind, ref id, canonical bytes) of each agreement in force and each verified receipt:
    # the node's ledger anchors them (see ContractJobs); a no-op without a chain
    record: Callable[[str, str, bytes], None] = field(default=lambda kind, ref, data: None)
    # wakes live streams when inspections are committed (node.runtime.table_watch); None: poll only
    new_inspections: TableWatch | None = None
    # bumped whenever `assets` changes, so a transport may keep encoded catalogs until then
    catalog_generation: int = 0
    # new negotiations and transfers a member may open with us in any hour (the settings
    # `negotiations_per_member_hour`, `transfers_per_member_hour`; see `over_quota`)
    negotiations_per_hour: int = DEFAULT_NEGOTIATIONS_PER_HOUR
    transfers_per_hour: int = DEFAULT_TRANSFERS_PER_HOUR
    # who may see which dataset (the setting ``dsp_access``; none: every member its role
    # admits): every catalog read and negotiation, over either binding, asks it
    access: DatasetAccess = field(default_factory=DatasetAccess)
    # re-reads of transfers sent already, and a consumer's resumes and suspensions, per
    # member (`ProviderTransfers.charge_reread`, `charge_control`), counted in the contract
    # database (a restart forgets none): made over the store's engine
    transfer_acts: TransferActs = field(init=False, repr=False)
    # what may be kept here (`ReceivedRoom`): set by the node (its free disk) or a managed
    # host (its tenant's quotas); None: nothing is asked
    received_room: ReceivedRoom | None = None

    def __post_init__(self) -> None:
        self.transfer_acts = TransferActs(self.store.engine, QUOTA_WINDOW)

    def _room(self, rows: int, size: int) -> AbstractContextManager[None]:
        """Around a write of rows a provider sent (`ReceivedRoom.receive`)."""
        room = self.received_room
        return nullcontext() if room is None else room.receive(rows, size)

    def _keep(self, size: int, what: str) -> None:
        """Refuse ``size`` bytes of ``what`` that do not fit (`ReceivedRoom.check_kept`)."""
        if self.received_room is not None:
            self.received_room.check_kept(size, what)

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def investigations(self) -> list[Investigation]:
        """The investigations peers opened with us (kept in the contract store)."""
        return self.store.notices.received_investigations()

    # ------------------------------------------------------------- catalog

    def catalog(self, role: str, kind: str = "") -> list[CatalogEntry]:
        entries = catalog(list(self.assets.values()), self.me.member_id, role)
        return [e for e in entries if not kind or e.kind.value == kind]

    def asset_for(self, asset_id: str, role: str) -> Asset:
        asset = self.assets.get(asset_id)
        if asset is None or not asset.visible_to(role):
            raise self._no_asset(asset_id, role)
        return asset

    def _no_asset(self, asset_id: str, role: str) -> UnknownContractError:
        shown = asset_id[:128]  # a caller's id, cut: it goes into the log with the answer
        return UnknownContractError(f"{self.me.name} offers no asset {shown!r} to {role}s")

    def asset_for_peer(self, asset_id: str, peer: MemberIdentity) -> Asset:
        """`asset_for` the peer's role, if the dataset's access policy lets this peer see
        it (`node.runtime.access`: 404 in the very words of a dataset that does not
        exist, so the answer does not tell a hidden one from none; 403 for an unattested
        BPNL or framework agreement)."""
        asset = self.asset_for(asset_id, peer.role)
        try:
            self.access.check(asset_id, peer)
        except UnknownContractError:
            raise self._no_asset(asset_id, peer.role) from None
        return asset

    def frameworks_for(self, policy: Policy, member_id: str) -> frozenset[str] | None:
        """The framework agreements the authority attests `member_id` signed, looked up
        only when `policy` asks for one (None otherwise, and for a member it lists none
        of: `policies.evaluate.Request.frameworks`)."""
        return self.access.attested_frameworks(member_id) if policy.uses_framework else None

    def catalog_for(self, peer: MemberIdentity, kind: str = "") -> list[CatalogEntry]:
        """`catalog` for the peer's role, without what the access policies hide from it."""
        return [e for e in self.catalog(peer.role, kind) if self.access.visible(e.asset_id, peer)]

    def offer_asset(self, asset: Asset) -> None:
        """Add an asset to the catalog while running (a federated job its coordinator
        publishes); an asset of the same id is replaced."""
        self.assets[asset.asset_id] = asset
        self.catalog_generation += 1
        logger.info("catalog: %s (%s) offered", asset.asset_id, asset.kind)

    def agreed_with(self, asset_id: str, provider: str) -> StoredAgreement | None:
        """Our newest active agreement, as consumer, for ``asset_id`` with the provider we
        call ``provider`` (a member name); the member id it names is who must answer."""
        found = [
            s
            for s in self.store.agreements(Role.CONSUMER, asset_id=asset_id)
            if s.active
            and s.signed.agreement.asset_id == asset_id
            and peer_name(s.signed.agreement.provider_id) == provider
        ]
        return found[-1] if found else None

    def customer_orders(self, customer: str) -> frozenset[str]:
        with held_connection.connect(self.qdm) as connection:
            return frozenset(r for (r,) in _CUSTOMER_ORDERS.all(connection, (customer,)))
