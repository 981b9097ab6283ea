"""The contract side of a node: its keys, clock, assets and stores, and the provider's moves.

`ContractRuntime` is built once in the composition root and shared by the gRPC
servicers, the REST routes and the background jobs. Everything here is
synchronous glue over the pure machines in `connector` and `policies`: it
loads state, applies one message, decides the provider's answer, saves; the
servicers and routes only decode, call one method and encode.

The runtime is one object made of rooms: the shared state and catalog
(`contracts_base`), the provider's negotiation moves (`contracts_negotiation`),
transfers and live streams (`contracts_transfer`), notifications, order closings and
the retention sweep (`contracts_notices`), the purge of a member leaving the data
space (`contracts_purge`, over the notices) and quality investigations and alerts
(`contracts_cases`, over the notices), the consumer's writes of received rows
(`contracts_received`), over the contract clock
(`contracts_clock`). This module joins them and builds the runtime from a node
directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey
from sqlalchemy import Engine

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.offer_choices import OfferChoice, chosen_assets
from qdspace.connector.qdm import Inspection
from qdspace.node.errors import NodeError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.identity.keyfiles import PLAIN, KeyFiles
from qdspace.node.layout import NodeLayout
from qdspace.node.runtime.contracts_cases import QualityCases
from qdspace.node.runtime.contracts_clock import CLOCK_CONTROL_ENV, ContractClock
from qdspace.node.runtime.contracts_consumer import ConsumerNegotiation
from qdspace.node.runtime.contracts_explain import ContractExplain
from qdspace.node.runtime.contracts_negotiation import ProviderNegotiation
from qdspace.node.runtime.contracts_purge import ContractPurge
from qdspace.node.runtime.contracts_received import ConsumerReceipts
from qdspace.node.runtime.contracts_transfer import ProviderTransfers
from qdspace.node.runtime.table_watch import TableWatch


@dataclass
class ContractRuntime(
    ConsumerNegotiation,
    ProviderNegotiation,
    ContractExplain,
    ProviderTransfers,
    ContractPurge,
    QualityCases,
    ConsumerReceipts,
):
    """The node's contract machinery; see the module docstring."""


def _secret(path: Path, what: str, key_files: KeyFiles) -> bytes:
    """A 32-byte node secret, created on first start (kept outside the database)."""
    if not path.exists():
        key_files.write(path, os.urandom(32))
    data = key_files.read(path, what)
    if len(data) != 32:
        raise NodeError(f"{path}: {what} must be 32 bytes, found {len(data)}")
    return data


def build_runtime(
    directory: Path,
    me: MemberIdentity,
    signing_key: SigningKey,
    qdm: Engine,
    key_files: KeyFiles = PLAIN,
    offers: Mapping[str, OfferChoice] | None = None,
) -> ContractRuntime:
    """The contract runtime over the node's own database (its contract tables come with
    the QDM schema: `open_store` migrates to the newest revision, ``0002_contracts``)."""
    files = NodeLayout(directory)
    kek = _secret(files.contract_kek, "contract key-encryption key", key_files)
    store = ContractStore(qdm, kek)
    control = os.environ.get(CLOCK_CONTROL_ENV, "") == "1"
    clock = ContractClock(files.contract_clock, control=control)
    # the standard assets, with the terms the provider chose (the setting ``offers``)
    assets = {a.asset_id: a for a in chosen_assets(me.member_id, offers or {})}
    secret = _secret(files.pseudonym_secret, "pseudonym secret", key_files)
    runtime = ContractRuntime(me, signing_key, store, qdm, clock, secret, assets)
    runtime.new_inspections = TableWatch(qdm, Inspection.__tablename__)
    return runtime
