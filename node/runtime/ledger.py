"""The node's ledger: settings, the anchorer in the node process, QDM leaves.

A node anchors when it has a chain: ``DIR/ledger.json`` (written by the launcher or by hand)
or ``QDSPACE_LEDGER_*`` environment variables name the JSON-RPC URL and the anchor contract;
the account key comes from ``DIR/chain.key`` or ``$QDSPACE_CHAIN_KEY`` (never logged).

Other parts of the node hand leaves in through :func:`enqueue_leaf` (agreements, deletion
receipts, model versions); QDM rows are swept in by :class:`QdmSweeper`: one ``inspection``
leaf per inspection record (so a regulator can ask for any one by its id) and one
``record_batch`` leaf per stored chunk of every other QDM table. The REST routes over
it (``/v1/ledger/...`` for the operator, ``/v1/regulator/...``) are in
`qdspace.node.api.ledger`; this module imports no web framework.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, insert, select, update

from qdspace.connector.qdm import TABLES
from qdspace.ledger.errors import AccountKeyError, LedgerError
from qdspace.ledger.leaves import KIND_CODES
from qdspace.ledger.proofs import InclusionProof, build_proof, verify_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, StoredLeaf, ensure_schema
from qdspace.ledger.tx import (
    ANCHOR_GAS,
    DEFAULT_MAX_FEE_PER_GAS,
    DEFAULT_MAX_GAS,
    DEFAULT_MAX_IN_FLIGHT,
)
from qdspace.node.context import NodeContext
from qdspace.node.errors import ConfigError
from qdspace.node.layout import LEDGER_FILE, NodeLayout
from qdspace.util.numbers import decimal

if TYPE_CHECKING:  # web3 and eth_account load only when a chain is configured
    from qdspace.ledger.anchorer import Anchorer
    from qdspace.ledger.client import LedgerClient
    from qdspace.ledger.keys import ChainSigner

log = logging.getLogger("node.runtime.ledger")

#: the current bytes of an anchored record, by ``(kind, ref_id)``; None when unknown here
RecordLoader = Callable[[str, str], bytes | None]

SWEEP_CHUNK = 5_000
INSPECTION_KIND = "inspection"


class LedgerSettings(BaseSettings):
    """Where the node anchors and how often; environment (``QDSPACE_LEDGER_*``) wins."""

    model_config = SettingsConfigDict(env_prefix="QDSPACE_LEDGER_", extra="forbid")

    rpc_url: str = ""
    contract: str = ""
    chain_id: int | None = None
    key_file: Path | None = None
    max_leaves: int = Field(1_000, ge=1)
    flush_s: float = Field(5.0, ge=0)
    sweep_s: float = Field(2.0, gt=0)
    # gas limit of each anchor transaction; 0 asks the chain to estimate every one (for
    # chains that price gas differently, e.g. rollups that charge L1 data as gas)
    gas: int = Field(ANCHOR_GAS, ge=0)
    # anchor transactions sent (consecutive nonces, one JSON-RPC batch request) before their
    # receipts are awaited; 1 for an endpoint that refuses batch requests
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, le=256)
    # the most the node signs to pay for a gas unit (gwei) and the highest gas limit it
    # signs: the endpoint quotes fees and estimates, and it may be a third party's
    max_fee_gwei: float = Field(DEFAULT_MAX_FEE_PER_GAS / 1e9, gt=0, le=1e9)
    max_gas: int = Field(DEFAULT_MAX_GAS, ge=21_000, le=30_000_000)
    # how far behind the head anchored batches are checked for a reorganisation (0: the
    # chain does not reorganise, as the embedded one; `qdspace ledger join` writes 64)
    reorg_depth: int = Field(0, ge=0, le=100_000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @classmethod
    def load(cls, directory: Path) -> LedgerSettings:
        """``DIR/ledger.json`` (optional) under the environment's overrides."""
        files = NodeLayout(directory)
        path = files.ledger
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        try:
            settings = cls(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None
        if settings.key_file is None and files.chain_key.exists():
            settings = settings.model_copy(update={"key_file": files.chain_key})
        return settings

    @property
    def enabled(self) -> bool:
        """A node without a chain URL runs without anchoring."""
        return bool(self.rpc_url)


def write_ledger_file(
    directory: Path, rpc_url: str, contract: str, chain_id: int, reorg_depth: int = 0
) -> Path:
    """What the launcher (or `qdspace ledger join`) writes into a member's directory."""
    path = NodeLayout(directory).ledger
    doc: dict[str, Any] = {"rpc_url": rpc_url, "contract": contract, "chain_id": chain_id}
    if reorg_depth:
        doc["reorg_depth"] = reorg_depth
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# -- QDM rows as leaves ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def canonical_row(qdm_kind: str, row: Mapping[str, Any]) -> bytes:
    """The bytes a QDM row is anchored as: sorted-key JSON without the storage id. A
    first version leaves out its versioning columns (so it hashes as before records had
    versions); a correction or a withdrawal includes them."""
    first = row.get("version", 1) == 1 and row.get("withdrawn_at") is None
    skip = ("id", "version", "withdrawn_at") if first else ("id",)
    doc = {"qdm": qdm_kind, **{k: _plain(v) for k, v in row.items() if k not in skip}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def inspection_ref(inspection_id: str, version: int) -> str:
    """The leaf id of one version of an inspection record: its id, then ``@vN`` for N > 1
    (a correction or withdrawal is anchored next to the version it replaced)."""
    return inspection_id if version == 1 else f"{inspection_id}@v{version}"


def _qdm_table(qdm_kind: str) -> Table:
    table = TABLES[qdm_kind].__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


_cursor_meta = MetaData()
cursor_table = Table(
    "ledger_qdm_cursor",
    _cursor_meta,
    Column("qdm_kind", String(32), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
)


class QdmSweeper:
    """Turns newly stored QDM rows into leaves; a cursor per table remembers how far it got."""

    def __init__(self, engine: Engine, anchorer: Anchorer) -> None:
        self.engine = engine
        self.anchorer = anchorer
        self._lock = threading.Lock()
        _cursor_meta.create_all(engine)

    def sweep(self) -> int:
        """Enqueue leaves for every row stored since the last sweep; returns rows covered."""
        total = 0
        with self._lock:
            for qdm_kind in TABLES:
                while (n := self._sweep_chunk(qdm_kind)) > 0:
                    total += n
        return total

    def _sweep_chunk(self, qdm_kind: str) -> int:
        table = _qdm_table(qdm_kind)
        with self.engine.connect() as conn:
            last = conn.execute(
                select(cursor_table.c.last_id).where(cursor_table.c.qdm_kind == qdm_kind)
            ).scalar_one_or_none()
            rows = conn.execute(
                select(table)
                .where(table.c.id > (last or 0))
                .order_by(table.c.id)
                .limit(SWEEP_CHUNK)
            ).all()
        if not rows:
            return 0
        mappings = [dict(r._mapping) for r in rows]
        first_id, last_id = int(mappings[0]["id"]), int(mappings[-1]["id"])
        if qdm_kind == INSPECTION_KIND:  # the bulk path: one transaction, no object per leaf
            self.anchorer.enqueue_records(
                INSPECTION_KIND,
                [inspection_ref(str(m["inspection_id"]), int(m["version"])) for m in mappings],
                [canonical_row(qdm_kind, m) for m in mappings],
            )
        else:
            body = b"\n".join(canonical_row(qdm_kind, m) for m in mappings)
            self.anchorer.enqueue_records(
                "record_batch", [f"{qdm_kind}:{first_id}-{last_id}"], [body]
            )
        with self.engine.begin() as conn:
            if last is None:
                conn.execute(insert(cursor_table).values(qdm_kind=qdm_kind, last_id=last_id))
            else:
                conn.execute(
                    update(cursor_table)
                    .where(cursor_table.c.qdm_kind == qdm_kind)
                    .values(last_id=last_id)
                )
        log.info("anchoring.sweep: %s rows %s..%s queued", qdm_kind, first_id, last_id)
        return len(mappings)

    def load_record(self, kind: str, ref_id: str) -> bytes | None:
        """The current bytes of an anchored QDM record (to show whether it still matches)."""
        if kind == INSPECTION_KIND:
            table = _qdm_table(INSPECTION_KIND)
            inspection_id, _, version = ref_id.rpartition("@v")
            if not inspection_id or not version.isdigit():
                inspection_id = ref_id
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(table).where(table.c.inspection_id == inspection_id)
                ).first()
            return None if row is None else canonical_row(INSPECTION_KIND, dict(row._mapping))
        if kind == "record_batch":
            qdm_kind, _, span = ref_id.partition(":")
            first, _, last = span.partition("-")
            low, high = decimal(first), decimal(last)
            if qdm_kind not in TABLES or low is None or high is None:
                return None
            table = _qdm_table(qdm_kind)
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(table).where(table.c.id >= low, table.c.id <= high).order_by(table.c.id)
                ).all()
            return b"\n".join(canonical_row(qdm_kind, dict(r._mapping)) for r in rows)
        return None


# -- the node's ledger -------------------------------------------------------------------


def root_anchorer(queue: LeafQueue, own: str) -> Callable[[str], str]:
    """A proof's root (hex) -> the account that must have anchored it for the proof to be
    this member's (`ledger.proofs.chain_checks`): the one this node's queue recorded for
    a batch of that root (its own account, or the account of a member that anchored the
    same leaves first, which this node adopted: both parties anchor an agreement), else
    its own (a root it never held: a stranger's)."""

    def of(root_hex: str) -> str:
        try:
            batch = queue.batch_with_root(bytes.fromhex(root_hex.removeprefix("0x")))
        except ValueError:
            batch = None
        if batch is not None and batch.state == ANCHORED and batch.sender:
            return batch.sender
        return own

    return of


@dataclass
class NodeLedger:
    """Everything the node needs to anchor and to answer a regulator."""

    settings: LedgerSettings
    queue: LeafQueue
    client: LedgerClient
    anchorer: Anchorer
    sweeper: QdmSweeper
    loaders: dict[str, RecordLoader] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def account(self) -> str:
        """The chain account this node anchors from."""
        return str(self.anchorer.signer.address)

    def anchorer_of(self, root_hex: str) -> str:
        """The account that must have anchored a proof's root (`root_anchorer`)."""
        return root_anchorer(self.queue, self.account)(root_hex)

    def start(self) -> None:
        """Run the anchorer and the QDM sweep in background threads."""
        self.anchorer.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sweep_loop, name="ledger-qdm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop both threads; queued leaves stay queued for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.anchorer.stop()

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweeper.sweep()
            except Exception:  # keep sweeping; the next pass retries from the cursor
                log.exception("anchoring.sweep: failed; retrying")
            self._stop.wait(self.settings.sweep_s)

    def load_record(self, kind: str, ref_id: str) -> bytes | None:
        """A registered loader's bytes for ``(kind, ref_id)``, else the QDM's."""
        loader = self.loaders.get(kind)
        if loader is not None:
            return loader(kind, ref_id)
        return self.sweeper.load_record(kind, ref_id)


def _signer(ctx: NodeContext, key_file: Path | None) -> ChainSigner:
    """The chain account's key: a node's own ``chain.key`` is read through the node's key
    files (a managed host decrypts it in memory); any other key file as it is."""
    from qdspace.ledger.keys import DEFAULT_KEY_ENV, ChainSigner, load_signer
    from qdspace.node.identity.keyfiles import PLAIN

    if key_file is None or key_file != ctx.layout.chain_key or ctx.key_files is PLAIN:
        return load_signer(key_file, DEFAULT_KEY_ENV)
    from qdspace.node.errors import IdentityError

    try:
        text = ctx.key_files.read(key_file, "chain key file").decode("ascii")
    except (IdentityError, UnicodeDecodeError) as exc:
        raise AccountKeyError(f"chain key file {key_file}: cannot read ({exc})") from None
    return ChainSigner.from_hex(text, source=f"chain key file {key_file}")


def attach_ledger(ctx: NodeContext) -> NodeLedger | None:
    """Build the node's ledger (when configured) into ``ctx.ledger``."""
    settings = LedgerSettings.load(ctx.directory)
    if not settings.enabled:
        log.info("anchoring: no chain configured (%s); not anchoring", LEDGER_FILE)
        return None
    if not settings.contract:
        raise ConfigError(f"{ctx.layout.ledger}: rpc_url given but no contract address")
    if settings.chain_id is None:  # else it signs for whatever chain the endpoint names
        raise ConfigError(
            f"{ctx.layout.ledger}: rpc_url given but no chain_id: the node signs anchor "
            "transactions only for the chain id it is told (the data space's, from its operator)"
        )
    if settings.gas > settings.max_gas:
        raise ConfigError(
            f"{ctx.layout.ledger}: gas {settings.gas} is over max_gas {settings.max_gas}"
        )
    from qdspace.ledger.anchor_policy import AnchorPolicy
    from qdspace.ledger.anchorer import Anchorer  # web3: only with a chain
    from qdspace.ledger.client import LedgerClient

    try:
        signer = _signer(ctx, settings.key_file)
        client = LedgerClient(
            settings.rpc_url,
            settings.contract,
            expected_chain_id=settings.chain_id,
            max_fee_per_gas=round(settings.max_fee_gwei * 1e9),
            max_gas=settings.max_gas,
        )
    except LedgerError as exc:
        raise ConfigError(f"ledger: {exc}") from None
    engine = ctx.store.engine
    ensure_schema(engine)
    queue = LeafQueue(engine)
    policy = AnchorPolicy(
        max_leaves=settings.max_leaves,
        max_age_s=settings.flush_s,
        gas=settings.gas or None,
        max_in_flight=settings.max_in_flight,
        reorg_depth=settings.reorg_depth,
    )
    anchorer = Anchorer(queue, client, signer, policy)
    ledger = NodeLedger(settings, queue, client, anchorer, QdmSweeper(engine, anchorer))
    ctx.ledger = ledger
    log.info(
        "anchoring: account %s anchors to %s at %s",
        signer.address,
        settings.rpc_url,
        settings.contract,
    )
    return ledger


def node_ledger(ctx: NodeContext) -> NodeLedger | None:
    """The node's ledger, or None when it runs without a chain."""
    return ctx.ledger


def enqueue_leaf(ctx: NodeContext, kind: str, ref_id: str, payload: bytes) -> StoredLeaf | None:
    """Queue ``payload`` (canonical bytes) durably for anchoring as ``(kind, ref_id)``.

    ``kind`` is one of ``agreement``, ``deletion_receipt``, ``model_version``,
    ``inspection``, ``record_batch``. Returns once committed to the node's database, or None
    when the node has no chain configured. The same id with the same bytes again is a no-op;
    the same id with other bytes raises ``LeafConflict``.
    """
    ledger = node_ledger(ctx)
    if ledger is None:
        return None
    return ledger.anchorer.enqueue(kind, ref_id, payload)


def is_anchored(ctx: NodeContext, kind: str, ref_id: str, payload: bytes) -> bool:
    """True when ``(kind, ref_id)`` with exactly ``payload`` is anchored and the chain agrees."""
    ledger = node_ledger(ctx)
    if ledger is None:
        return False
    try:
        proof = with_record(build_proof(ledger.queue, kind, ref_id), payload)
        return verify_proof(proof, ledger.client, anchorer=ledger.anchorer_of(proof.root)).valid
    except LedgerError:
        return False


def with_record(proof: InclusionProof, record: bytes | None) -> InclusionProof:
    """The proof carrying the record as the node holds it now.

    A record changed after anchoring is not refused here: it goes into the proof, and the
    verdict shows the regulator that its hash no longer matches what was anchored.
    """
    return proof if record is None else proof.with_record(record)


def register_record_loader(
    ctx: NodeContext, kind: str, loader: Callable[[str, str], bytes | None]
) -> None:
    """Let the regulator endpoints show the current bytes of ``kind`` records (e.g. agreements)."""
    if kind not in KIND_CODES:
        raise ConfigError(f"unknown leaf kind {kind!r}; one of: {', '.join(KIND_CODES)}")
    ledger = node_ledger(ctx)
    if ledger is not None:
        ledger.loaders[kind] = loader


@dataclass(frozen=True)
class ChainProbe:
    """One live look at the chain: does it answer within the timeout, and how fast."""

    reachable: bool
    latest_block: int | None
    ms: float
    error: str | None


def probe_chain(client: LedgerClient, chain_id: int | None, held: str | None = None) -> ChainProbe:
    """Ask the chain for its id and latest block now, in one request (``client`` carries
    the short timeout): it is reachable only as the node's chain ``chain_id`` (None: any
    id; a node with a chain names its id), and not
    while the anchorer's chain watch holds its reads (``held``: why; a chain started
    afresh keeps its id, only the watch knows it by its blocks)."""
    started = time.perf_counter()
    try:
        seen = client.observe()
    except LedgerError as exc:
        return ChainProbe(False, None, (time.perf_counter() - started) * 1000, str(exc))
    ms = (time.perf_counter() - started) * 1000
    if chain_id is not None and seen.chain_id != chain_id:
        why = (
            f"chain at {client.shown_url} serves chain id {seen.chain_id}, "
            f"the node anchors to chain id {chain_id}"
        )
        return ChainProbe(False, seen.head, ms, why)
    return ChainProbe(held is None, seen.head, ms, held)
