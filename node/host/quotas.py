"""Per-tenant quotas, as plain values and arithmetic: no clock, no file, no socket.

One tenant of a host must not take what the others need: the host's event loop, its
worker threads, its disk. So each tenant has a `Quota` (stored rows, database bytes,
requests per second with a burst, streams open at once, calls in flight at once), its
values checked here once whether they come from the CLI, ``host.json``, the registry
or the host API, and the counters the running host keeps per tenant:

- `TokenBucket` (`util.token_bucket`, shared with the authority's limit on directory
  publishes): ``rps`` tokens a second up to ``burst``; a call takes one or is refused
  with the seconds until one is there (the Retry-After);
- `Slots`: streams or calls held at once; taking and giving back are one step under a
  lock, so two calls racing for the last slot cannot both have it;
- `check_growth`: would an ingest, rows received from a provider, or a file the tenant's
  node keeps (a model version), of ``rows`` rows and ``size`` bytes pass the row or
  storage quota? The caller counts the request's rows and bytes as its growth (an upper
  bound: duplicates are only known once written), so a write that might not fit is
  refused before anything is written. The storage counted is the tenant's database and
  the files its node keeps in its folder: model versions are as much of the host's disk.

The clock is the caller's (``now`` arguments), so the unit tests drive time by hand.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from qdspace.node.host.errors import (
    CallQuotaExceeded,
    QuotaValueRefused,
    RateLimited,
    RowQuotaExceeded,
    StorageQuotaExceeded,
    StreamQuotaExceeded,
)
from qdspace.util.sizes import show_size

KIB = 1024
GIB = KIB**3
#: what is meant by "no limit" on the command line
UNLIMITED_WORDS = frozenset({"unlimited", "none"})
#: the largest value each quota accepts (anything larger is a typo or an attack)
MAX_ROWS = 10**12
MAX_STORAGE = 2**50  # 1 PiB
MAX_RPS = 1_000_000.0
MAX_BURST = 1_000_000
MAX_SLOTS = 100_000

UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KIB,
    "mib": KIB**2,
    "gib": KIB**3,
    "tib": KIB**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

#: the option of each quota, as the CLI and errors name it
FIELDS = {
    "max_rows": "rows",
    "max_storage": "storage",
    "rps": "requests per second",
    "burst": "burst",
    "max_streams": "streams",
    "max_calls": "calls in flight",
}


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None: no limit."""

    max_rows: int | None = 10_000_000
    max_storage: int | None = 10 * GIB
    rps: float | None = 100.0
    burst: int | None = 200
    max_streams: int | None = 32
    max_calls: int | None = 32

    def __post_init__(self) -> None:
        check_quota(self)

    def with_changes(self, changes: dict[str, Any]) -> Quota:
        """This quota with ``changes`` (field -> value or None) applied, checked."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise QuotaValueRefused(f"no quota named {sorted(unknown)[0]!r}")
        changes = dict(changes)
        if "rps" in changes and "burst" not in changes:  # a new rate brings its own burst
            rps = changes["rps"]
            finite = isinstance(rps, int | float) and math.isfinite(rps) and rps > 0
            changes["burst"] = max(1, min(MAX_BURST, math.ceil(2 * rps))) if finite else None
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


def _bounded_int(name: str, value: Any, top: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuotaValueRefused(f"quota {name} must be a whole number, not {value!r}")
    if value < 1:
        hint = " (to stop a tenant, suspend it)" if value == 0 else ""
        raise QuotaValueRefused(f"quota {name} must be at least 1, not {value}{hint}")
    if value > top:
        raise QuotaValueRefused(f"quota {name} of {value} is above the most allowed ({top})")


def check_quota(quota: Quota) -> None:
    """Every value a positive number within its bound, or None; else `QuotaValueRefused`."""
    _bounded_int("max_rows", quota.max_rows, MAX_ROWS)
    _bounded_int("max_storage", quota.max_storage, MAX_STORAGE)
    _bounded_int("burst", quota.burst, MAX_BURST)
    _bounded_int("max_streams", quota.max_streams, MAX_SLOTS)
    _bounded_int("max_calls", quota.max_calls, MAX_SLOTS)
    rps = quota.rps
    if rps is not None:
        if isinstance(rps, bool) or not isinstance(rps, int | float) or not math.isfinite(rps):
            raise QuotaValueRefused(f"quota rps must be a finite number, not {rps!r}")
        if not 0 < rps <= MAX_RPS:
            raise QuotaValueRefused(
                f"quota rps must be above 0 and at most {MAX_RPS:.0f}, not {rps}"
            )
    if (rps is None) != (quota.burst is None):
        raise QuotaValueRefused("quota rps and burst are limited together, or neither")


# -- the command line's spelling ---------------------------------------------------------


def _unlimited(text: str) -> bool:
    return text.strip().lower() in UNLIMITED_WORDS


def parse_count(text: str, name: str) -> int | None:
    """``"5000"`` (``_`` allowed between digits) or ``unlimited``; bounds are checked later."""
    if _unlimited(text):
        return None
    cleaned = text.strip()
    if not re.fullmatch(r"-?[0-9][0-9_]*", cleaned):
        raise QuotaValueRefused(f"--{name}: {text!r} is not a whole number (or 'unlimited')")
    return int(cleaned)


def parse_rate(text: str, name: str = "rps") -> float | None:
    """Requests per second (``"50"``, ``"0.5"``) or ``unlimited``."""
    if _unlimited(text):
        return None
    try:
        value = float(text)
    except ValueError:
        raise QuotaValueRefused(f"--{name}: {text!r} is not a number (or 'unlimited')") from None
    if not math.isfinite(value):
        raise QuotaValueRefused(f"--{name}: {text!r} is not a finite number")
    return value


def parse_size(text: str, name: str = "max-storage") -> int | None:
    """``"2GiB"``, ``"500MB"``, ``"1.5TiB"``, ``"4096"`` (bytes) or ``unlimited``."""
    if _unlimited(text):
        return None
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in UNITS:
        known = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        raise QuotaValueRefused(
            f"--{name}: {text!r} is not a size: a number and one of {known} (or 'unlimited')"
        )
    number = float(match.group(1))
    size = number * UNITS[unit]
    if not math.isfinite(size) or size > MAX_STORAGE:
        raise QuotaValueRefused(f"--{name}: {text!r} is above the most allowed (1 PiB)")
    if size < 1:
        raise QuotaValueRefused(f"--{name}: {text!r} is less than one byte")
    return int(size)


def show(value: float | None) -> str:
    if value is None:
        return "unlimited"
    return str(value) if isinstance(value, int) else f"{value:g}"


# -- the stored form (host.json, tenants.json, the host API) -------------------------------


class QuotaSettings(BaseModel):
    """A quota as JSON (null: no limit); checked as `Quota` is."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int | None = Quota.max_rows
    max_storage: int | None = Quota.max_storage
    rps: float | None = Quota.rps
    burst: int | None = Quota.burst
    max_streams: int | None = Quota.max_streams
    max_calls: int | None = Quota.max_calls

    @model_validator(mode="after")
    def _checked(self) -> QuotaSettings:
        self.quota()
        return self

    def quota(self) -> Quota:
        return Quota(**self.model_dump())

    @classmethod
    def of(cls, quota: Quota) -> QuotaSettings:
        return cls(**quota.as_dict())


# -- the counters of a running host ------------------------------------------------------


class Slots:
    """Things held at once (streams, calls), at most ``limit`` (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One slot, or False when all are held (one step: racing takers cannot both win)."""
        with self._lock:
            if self.limit is not None and self.held >= self.limit:
                return False
            self.held += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            if self.held <= 0:
                raise RuntimeError("a slot given back that was never taken")
            self.held -= 1


@dataclass(frozen=True)
class Usage:
    """What a tenant holds: rows stored, and its bytes: its database's and those of the
    files its node keeps in its folder (model versions, checkpoints: `admission.kept_bytes`)."""

    rows: int
    size: int


def rate_refusal(tenant: str, quota: Quota, wait_s: float) -> RateLimited:
    retry = max(1, math.ceil(wait_s))
    return RateLimited(
        f"tenant {tenant} is over its request rate quota ({show(quota.rps)} requests per second, "
        f"burst {show(quota.burst)}); retry in {retry} s",
        retry_after_s=retry,
    )


def member_rate_refusal(tenant: str, quota: Quota, shares: int, wait_s: float) -> RateLimited:
    retry = max(1, math.ceil(wait_s))
    share = "half" if shares <= 2 else f"1/{shares}"
    calling = "" if shares <= 2 else f"; {shares} members call it"
    return RateLimited(
        f"this member's calls to tenant {tenant} are over the share one member may take of "
        f"its request rate quota ({share} of {show(quota.rps)} requests per second, burst "
        f"{show(quota.burst)}{calling}); retry in {retry} s",
        retry_after_s=retry,
    )


def stream_refusal(tenant: str, held: int, limit: int | None) -> StreamQuotaExceeded:
    return StreamQuotaExceeded(
        f"tenant {tenant} has {held} streams open (its quota: {show(limit)}); "
        "close one before opening another"
    )


def call_refusal(tenant: str, held: int, limit: int | None) -> CallQuotaExceeded:
    return CallQuotaExceeded(
        f"tenant {tenant} has {held} calls in flight (its quota: {show(limit)}); retry shortly",
        retry_after_s=1,
    )


#: how `check_growth` names what brings the rows, and what was not stored
INGEST = ("this ingest carries", "nothing was stored")
KEPT_NOT = "it was not kept"
RECEIVED = (
    "rows received from a provider bring",
    "they were not stored (the transfer or subscription goes on from them once there is room)",
)


def check_growth(
    tenant: str,
    quota: Quota,
    usage: Usage,
    rows: int,
    size: int,
    what: tuple[str, str] = INGEST,
) -> None:
    """Refuse a write of up to ``rows`` new rows and ``size`` bytes (an ingest, or rows
    received from a provider: ``what``) that could pass the row or storage quota
    (`RowQuotaExceeded`, `StorageQuotaExceeded`), saying which."""
    if rows < 0 or size < 0:
        raise ValueError("a write has no negative rows or bytes")
    brings, kept = what
    if quota.max_rows is not None and usage.rows + rows > quota.max_rows:
        raise RowQuotaExceeded(
            f"tenant {tenant} stores {usage.rows} rows and {brings} up to {rows} "
            f"more: over its quota of {quota.max_rows} rows; {kept}"
        )
    if quota.max_storage is not None and usage.size + size > quota.max_storage:
        raise StorageQuotaExceeded(
            f"tenant {tenant} holds {show_size(usage.size)} (its database and model files) "
            f"and {brings} {show_size(size)}: over its storage quota of "
            f"{show_size(quota.max_storage)}; {kept}"
        )
