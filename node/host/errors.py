"""What a managed host refuses, one class per reason (each mapped in `node.faults`)."""

from __future__ import annotations

from qdspace.node.errors import IdentityError, NodeError, QuotaError


class HostError(NodeError):
    """Something about the host or one of its tenants."""


class TenantNameRefused(HostError, ValueError):
    """A tenant name that is not lowercase [a-z0-9-], 1-40 characters, or is taken."""


class UnknownTenant(HostError, LookupError):
    """No tenant of that name on this host."""


class TenantExists(HostError):
    """A tenant of that name (compared case-insensitively) is already on this host."""


class TenantSuspended(HostError):
    """The tenant is suspended by its host: no peer calls, no operator API."""


class SealedFileError(IdentityError):
    """A tenant's encrypted key file that does not open: tampered, sealed for another
    tenant, or the host master key is not the one it was sealed under."""


class WrongMasterKey(SealedFileError):
    """The host master key does not unwrap a tenant's data key."""


class TenantActive(HostError):
    """The tenant is being served and could write meanwhile: suspend it (or stop the
    host) before exporting it."""


class TenantBusy(HostError):
    """The tenant cannot be acted on now: it is being opened again (a renewal's reopen),
    or it cannot be removed yet (its purge's receipts are not all delivered, or it is not
    serving, so its peers could not receive them)."""


class HostNotRunning(HostError):
    """An action that needs the running host (its tenants' peers must be reachable)."""


class RemovalNotConfirmed(HostError, ValueError):
    """A removal whose confirmation does not name the tenant (or lacks ``--yes``)."""


class QuotaValueRefused(HostError, ValueError):
    """A quota value that is no positive number within its bound (or a bad size unit)."""


class QuotaExceeded(HostError, QuotaError):
    """A tenant over one of its quotas; the message names the quota, its limit and use."""

    def __init__(self, message: str, retry_after_s: int = 0) -> None:
        super().__init__(message)
        #: seconds after which the same call may pass (0: not until something changes)
        self.retry_after_s = retry_after_s


class RateLimited(QuotaExceeded):
    """More requests a second than the tenant's quota and burst allow."""


class CallQuotaExceeded(QuotaExceeded):
    """More of the tenant's calls in flight at once than its quota allows."""


class StreamQuotaExceeded(QuotaExceeded):
    """More streams (live subscriptions, transfers) open at once than its quota allows."""


class RowQuotaExceeded(QuotaExceeded):
    """An ingest that could take the tenant past its stored-rows quota."""


class StorageQuotaExceeded(QuotaExceeded):
    """A write (an ingest, rows received, a model version) that could take the tenant's
    bytes (its database and the files its node keeps) past its storage quota."""
