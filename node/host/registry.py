"""The host's book of tenants (``HOST/tenants.json``): who is hosted, on which port, and
whether suspended.

The book is what makes a suspension outlive a restart: the running host changes a
tenant's state here first and then acts, and ``host start`` serves each tenant as the
book says. Every change is a read-modify-write under ``host.lock`` (``flock``), so a
``tenant add`` from the CLI and a suspension through the running host's API cannot lose
each other's edit.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qdspace.node.errors import ConfigError
from qdspace.node.host.config import HostLayout
from qdspace.node.host.errors import TenantBusy, UnknownTenant
from qdspace.node.host.names import check_name
from qdspace.node.host.quotas import QuotaSettings
from qdspace.util.files import write_atomic


class TenantState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class TenantRecord(BaseModel):
    """One tenant as the book keeps it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    member_id: str
    role: str
    grpc_port: int = Field(ge=0, le=65535)
    regulator_port: int = Field(default=0, ge=0, le=65535)  # 0: its regulator API not served
    dsp_port: int = Field(default=0, ge=0, le=65535)  # 0: no Dataspace Protocol listener
    state: TenantState = TenantState.ACTIVE
    added_at: str
    changed_at: str
    reason: str = ""  # why it was suspended, as the host operator said
    #: where ``tenant export`` put it ("" = never exported): the member lives on there,
    #: so removing it from the host deletes the host's copy and purges nothing
    exported_to: str = ""
    #: its own quota; None: the host's defaults (``host.json`` ``quota``)
    quota: QuotaSettings | None = None


class Book(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, TenantRecord] = Field(default_factory=dict)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry:
    """Reads and changes ``tenants.json`` of one host directory."""

    def __init__(self, directory: Path) -> None:
        self.files = HostLayout(directory)

    def read(self) -> Book:
        path = self.files.registry
        try:
            return Book.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return Book()
        except (OSError, ValidationError, ValueError) as exc:
            raise ConfigError(f"{path} is damaged: {str(exc).splitlines()[0]}") from None

    def tenants(self) -> list[TenantRecord]:
        return sorted(self.read().tenants.values(), key=lambda r: r.name)

    def get(self, name: str) -> TenantRecord:
        record = self.read().tenants.get(check_name(name))
        if record is None:
            raise UnknownTenant(f"no tenant {name!r} on this host")
        return record

    @contextmanager
    def editing(self) -> Iterator[Book]:
        """The book, locked; written back when the block ends without an exception."""
        self.files.directory.mkdir(parents=True, exist_ok=True)
        with open(self.files.lock, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                book = self.read()
                yield book
                text = json.dumps(book.model_dump(mode="json"), indent=2) + "\n"
                write_atomic(self.files.registry, text.encode(), mode=0o600)
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def set_state(self, name: str, state: TenantState, reason: str = "") -> TenantRecord:
        with self.editing() as book:
            record = book.tenants.get(check_name(name))
            if record is None:
                raise UnknownTenant(f"no tenant {name!r} on this host")
            if state is TenantState.ACTIVE and record.exported_to:
                # served here as well, one member would run in two places: the same
                # certificate answering peers from two addresses, two stores diverging
                raise TenantBusy(
                    f"tenant {name} was exported to {record.exported_to}: the member runs "
                    "from there now and is not served here again; `tenant remove` deletes "
                    "the host's copy"
                )
            record.state = state
            record.reason = reason if state is TenantState.SUSPENDED else ""
            record.changed_at = now()
            return record.model_copy()

    def mark_exported(self, name: str, destination: str, reason: str) -> TenantRecord:
        """Suspended for good: the member now runs from ``destination``."""
        with self.editing() as book:
            record = book.tenants.get(check_name(name))
            if record is None:
                raise UnknownTenant(f"no tenant {name!r} on this host")
            record.state = TenantState.SUSPENDED
            record.reason = reason
            record.exported_to = destination
            record.changed_at = now()
            return record.model_copy()

    def set_quota(self, name: str, quota: QuotaSettings | None) -> TenantRecord:
        """The tenant's own quota (None: back to the host's defaults)."""
        with self.editing() as book:
            record = book.tenants.get(check_name(name))
            if record is None:
                raise UnknownTenant(f"no tenant {name!r} on this host")
            record.quota = quota
            record.changed_at = now()
            return record.model_copy()

    def remove(self, name: str) -> None:
        """Drop the tenant's entry (its directory is already gone)."""
        with self.editing() as book:
            if book.tenants.pop(check_name(name), None) is None:
                raise UnknownTenant(f"no tenant {name!r} on this host")
