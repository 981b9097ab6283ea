"""Errors of the connector room: one base class, subclasses that say what went wrong.

A subclass that is also a ``ValueError`` is the caller's fault (bad file, unknown
kind, unknown data element) and maps to HTTP 400 / gRPC INVALID_ARGUMENT; anything
else is the node's fault.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base class of every error raised by ``connector``."""


class UnknownKind(ConnectorError, ValueError):
    """A QDM kind that does not exist."""


class IngestFileError(ConnectorError, ValueError):
    """A file that cannot be ingested at all (missing, unreadable, wrong suffix, no header)."""


class DictionaryError(ConnectorError, ValueError):
    """A value that the data dictionary cannot interpret (unknown element, unit or code)."""


class StorageError(ConnectorError, RuntimeError):
    """The database cannot be opened, migrated or written."""


class UnknownRecordError(ConnectorError, LookupError):
    """No QDM record with that natural key (or it is withdrawn already)."""
