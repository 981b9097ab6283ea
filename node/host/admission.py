"""A running tenant's quotas at work: calls admitted or refused before they cost anything.

Every tenant of a host shares one event loop and one pool of worker threads, so
fairness is decided at the door: each peer gRPC call (an interceptor outside the
authentication and decoding, `QuotaInterceptor`) and each operator API call (the host's
dispatcher, before the tenant's app) first takes a token of the tenant's `TokenBucket`
and a slot (a stream, or a call in flight; the tenant's staff have a bucket and slots of
their own, so members cannot spend them; each member calling takes an equal share of the
members' rate, so members cannot starve each other); a call over a quota is refused there with
RESOURCE_EXHAUSTED / 429 and the seconds to wait, having cost a dictionary lookup and a
lock. A tenant that floods the host gets its quota's worth of service, no more, and
its neighbours' calls do not queue behind its surplus. The calls-in-flight quota counts
calls, not threads, and allows more than a pool has: the shared worker threads are
taken in turns, each tenant within its share (`node.host.workers`).

Ingest (`node.api.app`, through `NodeContext.ingest_admission`) is checked against the
row and storage quotas with the tenant's usage measured fresh (rows in its QDM tables;
its SQLite file and WAL, or its PostgreSQL schema or database; and the files its node
keeps in its folder, `kept_folders`: model versions, a coordinator's checkpoints) and the
upload counted as growth. Model versions were on no quota: a tenant training or receiving
version after version filled the host's disk under a storage quota that saw only its
database. Now their bytes count, and a writer of such a file asks first
(`NodeContext.check_kept`, here `check_kept`), refused before it writes when the file
would pass the quota. Rows the tenant receives from its providers (pulls and live
subscriptions, each group before it is written, `receive`) count against the same
quotas: a provider, or an order larger than the host allowed for, cannot fill the host's
disk through a tenant. Every write let in is counted in the usage until it ends and the
next measure sees it, so an ingest and a pull (or two pulls) cannot both take the last
rows of a quota. The rows held count the mirror of what providers sent (its records,
tombstones and trail of changes) next to the QDM tables. Before the quotas, both ask the
free disk the tenant's node keeps (`node.disk_room`: the tenants of a host share its
disk, and quotas that add up to more than it holds are the host operator's to avoid, not
its to trust).

A refusal is logged once, then summed up at most every ``LOG_EVERY_S`` (a flood must not
turn into a flood of log lines).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import text

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.storage import QualityStore
from qdspace.node.disk_room import DiskRoom
from qdspace.node.host.errors import QuotaExceeded
from qdspace.node.host.quotas import (
    INGEST,
    KEPT_NOT,
    RECEIVED,
    Quota,
    Slots,
    Usage,
    call_refusal,
    check_growth,
    member_rate_refusal,
    rate_refusal,
    stream_refusal,
)
from qdspace.node.layout import NodeLayout
from qdspace.node.rpc.wrap import around_calls
from qdspace.util.token_bucket import SharedBuckets, TokenBucket

logger = logging.getLogger("node.host")

LOG_EVERY_S = 10.0
#: how long the usage measured for rows received from providers stands, grown by what
#: was let in since, before it is measured again (a measure counts every table)
RECEIVED_MEASURE_S = 5.0
RETRY_AFTER = "retry-after"
#: a member that called a tenant within this many seconds has a share of its rate
MEMBER_WINDOW_S = 30.0

Release = Callable[[], None]

_DATABASE_BYTES = text("SELECT pg_database_size(current_database())")
_SCHEMA_BYTES = text(
    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')"
)


def kept_folders(layout: NodeLayout) -> tuple[Path, ...]:
    """The folders of a tenant's directory whose files grow with its use, and so count
    in its storage: the model registry (an ONNX file a version, the audit set), the
    federation's (a coordinated job's checkpoints in two slots and its versions, a
    member's training shares) and the inspection tier's (split manifests, heatmaps).
    Not counted: its keys and settings (a few KiB, fixed), the ``files`` folder (the
    host operator's to fill, not the node's) and an upload being spooled (counted as the
    ingest's growth while it is in flight)."""
    return (layout.models, layout.federation, layout.inspection)


def kept_bytes(folders: Iterable[Path]) -> int:
    """The bytes of the files under ``folders`` (blocking). Links are not followed (a
    link counts as itself); a folder missing, or a file removed while walked, counts
    nothing."""
    total = 0
    stack = list(folders)
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def measure_usage(
    store: QualityStore, contracts: ContractStore | None = None, kept: Iterable[Path] = ()
) -> Usage:
    """Rows in the QDM tables and in the mirror of what providers sent (`contracts`), and
    the database's bytes with those of the files under ``kept`` (`kept_folders`: the
    files the tenant's node keeps, on the host's disk whatever its database) (blocking:
    run it in a thread)."""
    rows = sum(store.counts().values())
    if contracts is not None:
        rows += contracts.stored_rows()
    files = kept_bytes(kept)
    engine = store.engine
    if engine.dialect.name == "sqlite":
        database = Path(engine.url.database or "")
        size = sum(
            p.stat().st_size
            for p in (database, database.with_name(database.name + "-wal"))
            if p.is_file()
        )
        return Usage(rows, size + files)
    with engine.connect() as connection:  # PostgreSQL: its own schema, or its own database
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        query = _DATABASE_BYTES if schema == "public" else _SCHEMA_BYTES
        return Usage(rows, int(connection.execute(query).scalar_one()) + files)


def _bucket(quota: Quota, now: float) -> TokenBucket | None:
    """A token bucket of the quota's rate, or None (no rate quota)."""
    if quota.rps is None or quota.burst is None:
        return None
    return TokenBucket(quota.rps, quota.burst, now)


def _member_buckets(quota: Quota) -> SharedBuckets | None:
    """One bucket a member, of an equal share of the quota's rate and burst among the
    members calling now (at least two shares: one member alone takes half), or None (no
    rate quota). Keyed by a digest of the member's certificate: only members that passed
    the mutual TLS handshake call, so there are as many as the data space has members."""
    if quota.rps is None or quota.burst is None:
        return None
    return SharedBuckets(quota.rps, quota.burst, window=MEMBER_WINDOW_S)


def _changed(bucket: TokenBucket | None, quota: Quota, now: float) -> TokenBucket | None:
    """`bucket` under a new quota: its tokens kept where it goes on."""
    if bucket is None or quota.rps is None or quota.burst is None:
        return _bucket(quota, now)
    bucket.change(quota.rps, quota.burst, now)
    return bucket


class TenantAdmission:
    """One tenant's quota counters (see the module)."""

    def __init__(
        self,
        tenant: str,
        quota: Quota,
        measure: Callable[[], Usage] | None = None,
        disk: DiskRoom | None = None,
    ) -> None:
        self.tenant = tenant
        self.quota = quota
        self._measure = measure
        #: the free disk the tenant's node keeps (`node.disk_room`), asked before the quotas
        self.disk = disk
        now = time.monotonic()
        self._bucket = _bucket(quota, now)
        self._staff_bucket = _bucket(quota, now)
        self._members = _member_buckets(quota)
        self.streams = Slots(quota.max_streams)
        self.calls = Slots(quota.max_calls)
        self.staff_calls = Slots(quota.max_calls)
        self._ingest = asyncio.Lock()  # one ingest at a time
        #: guards the usage, the writes in flight and every measure
        self._lock = threading.Lock()
        self._measured_at = -RECEIVED_MEASURE_S
        #: as last measured, with the writes in flight then, grown by every write let in
        self.usage: Usage | None = None
        self._in_flight = Usage(0, 0)  # writes let in and not ended yet
        self.refused = 0  # calls refused since the last log line
        self._logged_at = 0.0

    def change(self, quota: Quota) -> None:
        """New limits, live: held slots stay held, the bucket keeps its tokens."""
        now = time.monotonic()
        self._bucket = _changed(self._bucket, quota, now)
        self._staff_bucket = _changed(self._staff_bucket, quota, now)
        self._members = _member_buckets(quota)  # (each member's starts full again)
        self.streams.limit = quota.max_streams
        self.calls.limit = quota.max_calls
        self.staff_calls.limit = quota.max_calls
        self.quota = quota

    # -- calls -----------------------------------------------------------------------

    def admit_call(self, *, stream: bool, staff: bool = False, member: bytes = b"") -> Release:
        """A token and a slot for one call; its release, or a `QuotaExceeded` refusal.

        The tenant's own staff (its operator API, ``staff``) draw on a bucket and call
        slots of their own, of the same size as the members': sharing one, any member
        flooding the tenant's gRPC or DSP listener locked its staff out of their own
        API (429) for as long as it kept at it. A member's call (``member``: what tells
        members apart, the certificate its TLS handshake verified) first takes a token
        of that member's own bucket, an equal share of the tenant's among the members
        calling it now (`SharedBuckets`; half while one calls): members flooding the
        tenant, one or several, leave each other member calling it its share."""
        try:
            return self._admit(stream, staff, member)
        except QuotaExceeded as exc:
            self._note_refusal(exc)
            raise

    def _admit(self, stream: bool, staff: bool, member: bytes) -> Release:
        if member and self._members is not None:
            members = self._members
            wait = members.take(hashlib.sha256(member).hexdigest(), time.monotonic())
            if wait:
                raise member_rate_refusal(self.tenant, self.quota, members.shares, wait)
        bucket = self._staff_bucket if staff else self._bucket
        if bucket is not None:
            wait = bucket.take(time.monotonic())
            if wait:
                raise rate_refusal(self.tenant, self.quota, wait)
        slots = self.staff_calls if staff else self.streams if stream else self.calls
        if not slots.take():
            if stream:
                raise stream_refusal(self.tenant, slots.held, slots.limit)
            raise call_refusal(self.tenant, slots.held, slots.limit)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slots.give_back()

        return release

    def _note_refusal(self, exc: QuotaExceeded) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            more = f" ({self.refused} refused since the last report)" if self.refused > 1 else ""
            logger.warning("tenant %s: %s%s", self.tenant, exc, more)
            self._logged_at, self.refused = now, 0

    @property
    def _limits_growth(self) -> bool:
        """Whether a write's rows or bytes are checked (a row or storage quota is set)."""
        return self.quota.max_rows is not None or self.quota.max_storage is not None

    @property
    def counts_rows(self) -> bool:
        """Whether an ingest's rows are checked (a row quota is set)."""
        return self.quota.max_rows is not None

    def interceptor(self) -> QuotaInterceptor:
        return QuotaInterceptor(self)

    # -- writes: ingests and rows received from providers ------------------------------

    @asynccontextmanager
    async def admit(self, rows: int, size: int) -> AsyncIterator[None]:
        """Held around one ingest (`node.context.IngestAdmission`): measured afresh, its
        rows and bytes held as in flight until it ends, then measured again."""
        async with self._ingest:
            if self.disk is not None:
                self.disk.check_ingest(size)
            held = self._measure is not None and self._limits_growth
            if held:
                await asyncio.to_thread(partial(self._reserve, rows, size, ingest=True))
            try:
                yield
            finally:
                if held:
                    self._settle(rows, size)
                if self._measure is not None:
                    await asyncio.to_thread(self._remeasure)

    def check_upload(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes as it arrives, before it is read whole or
        spooled (`IngestAdmission`): the disk, and the storage quota against the usage as
        last measured (an ingest is measured afresh when it is admitted)."""
        if self.disk is not None:
            self.disk.check_ingest(size)
        self._check_storage(size, INGEST, measure_stale=False)

    def check_kept(self, size: int, what: str) -> None:
        """Refuse ``size`` more bytes of ``what`` (quality case data, a peer's or the
        staff's; a model version its node is about to write) that do not fit
        (`ReceivedRoom`, `NodeContext.check_kept`): the disk, and the storage quota
        against the usage as last measured (measured again once stale), and counted in
        until the next measure (`_check_storage`). Quality cases
        were written on no quota: 100 of its staff's took a tenant's database to 150x its
        storage quota, and a member's opened at a tenant locked its own ingests out."""
        if self.disk is not None:
            self.disk.check(size, f"{what} brings")
        self._check_storage(size, (f"{what} brings", KEPT_NOT), measure_stale=True, count=True)

    def _check_storage(
        self, size: int, what: tuple[str, str], *, measure_stale: bool, count: bool = False
    ) -> None:
        """`check_growth` of ``size`` bytes against the storage quota, on the usage as
        last measured (measured now if never, or if ``measure_stale`` and it is stale).

        ``count``: the bytes let in are added to the usage until the next measure (case
        data is written right after its check, and nothing else counts it): checked one
        at a time under the lock, racing writes of a member's cases could each pass on
        the same measure and together go over the quota. An upload is not counted: its
        ingest is measured afresh when it is admitted."""
        if self._measure is None or self.quota.max_storage is None:
            return
        with self._lock:
            if self.usage is None or (measure_stale and self._stale()):
                self._remeasure_locked()
            usage = self.usage
            assert usage is not None
            check_growth(self.tenant, self.quota, usage, 0, size, what)
            if count:
                self.usage = Usage(usage.rows, usage.size + size)

    @contextmanager
    def receive(self, rows: int, size: int) -> Iterator[None]:
        """Held around the write of up to ``rows`` rows and ``size`` bytes received from
        a provider (blocking: entered in the worker thread that writes them); refused with
        `RowQuotaExceeded` or `StorageQuotaExceeded` when they could pass a quota.

        A pull or a live stream writes a group every few thousand rows, so the usage is
        not measured for each: a measure stands for ``RECEIVED_MEASURE_S``, grown by every
        group let in since (an upper bound: a re-delivery stores nothing)."""
        if self.disk is not None:
            self.disk.check_received(size)
        held = self._measure is not None and self._limits_growth
        if held:
            self._reserve(rows, size, ingest=False)
        try:
            yield
        finally:
            if held:
                self._settle(rows, size)

    def _reserve(self, rows: int, size: int, *, ingest: bool) -> None:
        """Check a write against the usage (measured now for an ``ingest``, or if the
        measure is stale) and count it in: in the usage, and as in flight until `_settle`.

        Ingests and received groups of several transfers pass here one at a time, and
        every measure adds the writes in flight then (written or not, the measure may
        not have seen them), so two writes cannot both take the last rows of a quota:
        the usage is an upper bound until the next measure corrects it."""
        with self._lock:
            if ingest or self.usage is None or self._stale():
                self._remeasure_locked()
            usage = self.usage
            assert usage is not None
            try:
                check_growth(
                    self.tenant, self.quota, usage, rows, size, INGEST if ingest else RECEIVED
                )
            except QuotaExceeded as exc:
                if not ingest:  # a received group's refusal is logged; an ingest's is answered
                    self._note_refusal(exc)
                raise
            self.usage = Usage(usage.rows + rows, usage.size + size)
            self._in_flight = Usage(self._in_flight.rows + rows, self._in_flight.size + size)

    def _settle(self, rows: int, size: int) -> None:
        """A write counted in by `_reserve` has ended (stored or not)."""
        with self._lock:
            self._in_flight = Usage(self._in_flight.rows - rows, self._in_flight.size - size)

    def _stale(self) -> bool:
        return time.monotonic() - self._measured_at >= RECEIVED_MEASURE_S

    def _remeasure(self) -> None:
        with self._lock:
            self._remeasure_locked()

    def refresh(self) -> None:
        """Measure again if never measured or the measure is stale (blocking): the host
        operator sees what the tenant holds now, the model versions it wrote since its
        last ingest too, not the usage of that ingest."""
        if self._measure is None:
            return
        with self._lock:
            if self.usage is None or self._stale():
                self._remeasure_locked()

    def _remeasure_locked(self) -> None:
        assert self._measure is not None
        measured = self._measure()
        flight = self._in_flight
        self.usage = Usage(measured.rows + flight.rows, measured.size + flight.size)
        self._measured_at = time.monotonic()

    def public(self) -> dict[str, Any]:
        """The quota and what is in use (for the host operator: counts, no data)."""
        usage = self.usage
        return {
            "quota": self.quota.as_dict(),
            "use": {
                "streams": self.streams.held,
                "calls": self.calls.held,
                "rows": usage.rows if usage is not None else None,
                "storage": usage.size if usage is not None else None,
            },
        }


class QuotaInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Takes the tenant's token and slot before any other work on a call (the module)."""

    def __init__(self, admission: TenantAdmission) -> None:
        self._admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return around_calls(handler, self._admitted)

    @asynccontextmanager
    async def _admitted(
        self, context: grpc.aio.ServicerContext, stream: bool
    ) -> AsyncIterator[None]:
        try:
            release = self._admission.admit_call(stream=stream, member=_peer_cert(context))
        except QuotaExceeded as exc:
            trailer = ((RETRY_AFTER, str(exc.retry_after_s)),) if exc.retry_after_s else ()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailer)
            raise  # abort raises; for the type checker
        try:
            yield
        finally:
            release()


def _peer_cert(context: grpc.aio.ServicerContext) -> bytes:
    """The certificate the caller's TLS handshake verified (b"": none, e.g. in a test)."""
    try:
        certs = context.auth_context().get("x509_pem_cert") or ()
    except Exception:  # a context without TLS (the interceptor runs before authentication)
        return b""
    return bytes(certs[0]) if certs else b""
