"""Removing a tenant from the host: purge, wait for the receipts to leave, tear down.

A tenant that leaves the data space must not take the data providers shared with it
into oblivion unanswered: removal runs the member-side purge
(`runtime.contracts_purge.ContractPurge.purge`: ends its agreements as consumer,
deletes what it received, signs one deletion receipt per (agreement, order), queues
each to its provider and for anchoring), and the tenant's database is deleted only
once its outbox is empty, since the receipts leave from there, and, for a tenant that
anchors, once its anchoring queue is empty, since that lives in the same database. That
needs the tenant served, with its contract jobs running, so removal goes through the running host
(host-management routes ``POST /host/v1/tenants/{name}/purge``, ``GET .../outbox``,
``POST .../remove``; the CLI drives them and shows the outbox draining). The remove
route runs the purge again first (idempotent: it signs nothing a second time) and
refuses while anything is undelivered, so no caller can skip it.

An exported tenant (`export`) is different: the member lives on elsewhere with its data
and agreements, so removing it deletes the host's copy only, purges nothing and sends
nothing; that works with the host stopped too (`remove_offline`).

What is deleted: the tenant's directory (its sealed keys, its SQLite store) with its
wrapped data key first (crypto-shredding what a backup of the host disk still holds),
then its registry entry. A tenant on its own PostgreSQL database: the database (or
schema) is the host operator's to drop; the result names it (without its password).

A removal holds the tenant's lifecycle lock (`HostRuntime.lifecycle`) from its purge to
the deletion of the registry entry, and so does a purge or an outbox nudge alone: a
``tenant renew`` (a reopen) or a suspension asked meanwhile waits for it, or it for them,
and each finds the tenant as the step before left it. What is removed is the tenant
serving when the removal holds the lock, never an object a reopen has replaced since.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdspace.node.host.config import HostLayout
from qdspace.node.host.errors import HostNotRunning, RemovalNotConfirmed, TenantBusy
from qdspace.node.host.registry import Registry
from qdspace.node.host.runtime import HostedTenant, HostRuntime, as_member

logger = logging.getLogger("node.host")

#: how long one nudge lets the tenant's anchorer run (the CLI nudges again each second)
ANCHOR_NUDGE_S = 5.0


@dataclass(frozen=True)
class Removal:
    name: str
    member_id: str
    purged: bool  # False: an exported tenant (nothing purged, nothing sent)
    database: str  # the PostgreSQL database left in place (no password), or ""


def check_confirmed(name: str, confirm: str) -> None:
    if confirm != name:
        raise RemovalNotConfirmed(
            f"confirm: {confirm!r} is not the tenant's name ({name!r}); nothing was removed"
        )


def fresh(runtime: HostRuntime, name: str) -> HostedTenant:
    """The tenant with its registry entry read again: ``tenant export`` (run beside the
    host on a suspended tenant) marks it exported in the registry only."""
    tenant = runtime.get(name)
    tenant.record = runtime.registry.get(name)
    return tenant


def _serving(tenant: HostedTenant) -> Any:
    """The tenant's contract runtime; refused unless it serves (peers must be reached)."""
    if tenant.ctx is None or tenant.error:
        raise TenantBusy(
            f"tenant {tenant.name} is not serving ({tenant.error or 'not open'}): its purge's "
            "receipts could not reach its providers; fix it, restart the host, remove again"
        )
    if tenant.suspended:
        raise TenantBusy(
            f"tenant {tenant.name} is suspended: resume it first (`qdspace host tenant resume`) "
            "so its providers receive its deletion receipts; nothing was removed"
        )
    if tenant.ctx.contracts is None:
        raise TenantBusy(f"tenant {tenant.name} runs no contract machinery")
    return tenant.ctx.contracts


async def purge(runtime: HostRuntime, name: str) -> dict[str, Any]:
    """Run the tenant's purge and start delivering its receipts; counts only (the host
    operator reads no tenant data)."""
    async with runtime.lifecycle(name):
        tenant = fresh(runtime, name)
        with as_member(name):
            return await _purge(tenant)


async def _purge(tenant: HostedTenant) -> dict[str, Any]:
    """`purge` (hold the tenant's lifecycle lock)."""
    if tenant.record.exported_to:
        raise TenantBusy(
            f"tenant {tenant.name} was exported to {tenant.record.exported_to}: the member "
            "lives on there with its data; `tenant remove` deletes the host's copy "
            "without a purge"
        )
    contracts = _serving(tenant)
    report = await asyncio.to_thread(contracts.purge)
    assert tenant.ctx is not None
    client = tenant.ctx.contract_client
    if client is not None:  # their rows are refused from now on; none is resumed
        await client.end_subscriptions("its agreement was purged", agreements=report.agreements)
    if tenant.ctx.outbox is not None:
        await tenant.ctx.outbox.flush()
    return {
        "agreements": len(report.agreements),
        "terminated": len(report.terminated),
        "receipts": len(report.receipts),
        "rows_deleted": report.rows_deleted,
        "failures": [f"{f.agreement_id}/{f.order_id}: {f.error}" for f in report.failures],
        "undelivered": contracts.store.outbox_backlog(),
    }


async def outbox(runtime: HostRuntime, name: str) -> dict[str, int]:
    """How many messages the tenant still owes its peers and how many of its records wait
    for the chain (a nudge to deliver and anchor them)."""
    async with runtime.lifecycle(name):
        return await _owed(runtime.get(name))


async def _owed(tenant: HostedTenant) -> dict[str, int]:
    """`outbox` (hold the tenant's lifecycle lock)."""
    contracts = _serving(tenant)
    assert tenant.ctx is not None
    if tenant.ctx.outbox is not None:
        await tenant.ctx.outbox.flush()
    return {
        "undelivered": contracts.store.outbox_backlog(),
        "unanchored": await asyncio.to_thread(_anchor_now, tenant),
    }


def _anchor_now(tenant: HostedTenant) -> int:
    """Anchor what the tenant queued (a few seconds at most); how many leaves are left.
    A tenant without a chain anchors nothing and owes nothing."""
    ledger = tenant.ledger
    if ledger is None:
        return 0
    from qdspace.ledger.leaves import KIND_CODES
    from qdspace.ledger.queue_schema import SEALED, SIGNED

    ledger.anchorer.flush(timeout_s=ANCHOR_NUDGE_S)
    queue = ledger.queue
    waiting = sum(queue.pending(kind).count for kind in KIND_CODES)
    return waiting + sum(b.leaf_count for b in queue.batches(SEALED, SIGNED))


def _database(tenant: HostedTenant) -> str:
    from sqlalchemy.engine import make_url

    assert tenant.ctx is not None
    url = make_url(tenant.ctx.settings.database_url)
    if url.get_backend_name() == "sqlite":
        return ""
    return url.render_as_string(hide_password=True)


async def remove(runtime: HostRuntime, name: str, confirm: str) -> Removal:
    """Purge (again, idempotent), check the outbox is empty, tear the tenant down and
    delete it (see the module). Refused with `TenantBusy` while receipts are owed."""
    check_confirmed(name, confirm)
    async with runtime.lifecycle(name):
        tenant = fresh(runtime, name)
        exported = bool(tenant.record.exported_to)
        with as_member(name):
            if not exported:
                await _purge(tenant)
                _check_owed(name, await _owed(tenant))
            # an exported tenant's database serves the exported node now: nothing to drop
            database = _database(tenant) if tenant.ctx is not None and not exported else ""
            await runtime.drop(tenant)
            _delete(runtime.files, name)
    logger.warning("tenant %s removed%s", name, " (exported earlier)" if exported else "")
    return Removal(name, tenant.record.member_id, not exported, database)


def _check_owed(name: str, owed: dict[str, int]) -> None:
    """Refuse the removal (`TenantBusy`) while the tenant owes its peers or its chain."""
    if owed["undelivered"]:
        raise TenantBusy(
            f"tenant {name} still owes its peers {owed['undelivered']} messages (deletion "
            "receipts); it was not removed: wait for delivery and remove again"
        )
    if owed["unanchored"]:  # its anchoring queue is in the database removal deletes
        raise TenantBusy(
            f"tenant {name} has {owed['unanchored']} records (deletion receipts among "
            "them) not yet anchored on its chain; it was not removed: wait and remove again"
        )


def _delete(files: HostLayout, name: str) -> None:
    """The wrapped data key first (the sealed files no longer open), then the directory,
    then the registry entry (a crash in between leaves an entry that removes again)."""
    files.wrapped_key(name).unlink(missing_ok=True)
    shutil.rmtree(files.tenant(name), ignore_errors=True)
    Registry(files.directory).remove(name)


def remove_offline(directory: Path, name: str) -> Removal:
    """An exported tenant removed while the host is stopped (nothing to purge); any other
    tenant needs the running host (`HostNotRunning`)."""
    files = HostLayout(directory.resolve())
    record = Registry(files.directory).get(name)
    if not record.exported_to:
        raise HostNotRunning(
            f"removing tenant {name} purges its data and sends signed deletion receipts to "
            f"its providers, which needs it served: start the host (`qdspace host start "
            f"--dir {directory}`) and remove it again; nothing was removed"
        )
    _delete(files, name)
    return Removal(name, record.member_id, False, "")
