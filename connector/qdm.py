"""The Quality Data Model: the tables a node keeps about its own production.

These SQLModel classes are the storage layer's; nothing outside ``connector`` builds
or returns them (the API has its own public models). Every table has a natural key
with a UNIQUE constraint, which is what makes re-ingesting a file store nothing twice.
Times are aware datetimes in UTC.

Records are versioned, because a consumer's copy must follow the provider's: a row
re-ingested under the same natural key with different content is a *correction*
(``version`` + 1) and a withdrawal keeps the row as a *tombstone* (``withdrawn_at``
set, ``version`` + 1). Either change also moves the row to a fresh surrogate ``id``
above every other, so the ``id`` order is the order of changes: a reader that
remembers the highest id it has seen (a transfer's watermark, the ledger sweeper's
cursor) finds every insert, correction and withdrawal after it by ``id > cursor``
(see :mod:`connector.versions`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata

#: the columns every QDM table has for versioning (not part of a record's content)
VERSION_COLUMNS = ("version", "withdrawn_at")


def _version() -> Any:
    return Field(default=1, sa_column_kwargs={"server_default": "1"})


class Order(SQLModel, table=True):
    """A purchase order between a customer and a supplier (the unit of a contract's scope)."""

    __tablename__ = "qdm_order"
    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=64, unique=True)
    customer: str = Field(max_length=64)
    supplier: str = Field(max_length=64)
    product: str = Field(max_length=128)
    quantity: int
    status: str = Field(max_length=16)
    opened_at: datetime
    closed_at: datetime | None = None

    version: int = _version()
    withdrawn_at: datetime | None = None


class Product(SQLModel, table=True):
    """One serial-numbered unit (a cell string, a module) and the batch it belongs to."""

    __tablename__ = "qdm_product"
    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(max_length=64, unique=True)
    product_type: str = Field(max_length=64)
    order_id: str | None = Field(default=None, max_length=64, index=True)
    batch_id: str | None = Field(default=None, max_length=64, index=True)
    made_at: datetime

    version: int = _version()
    withdrawn_at: datetime | None = None


class Batch(SQLModel, table=True):
    """A material batch, made here or bought (``producer`` names who made it)."""

    __tablename__ = "qdm_batch"
    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(max_length=64, unique=True)
    material: str = Field(max_length=128)
    kind: str = Field(max_length=16)
    producer: str = Field(max_length=64)
    quantity: float
    made_at: datetime
    customer: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=64, index=True)

    version: int = _version()
    withdrawn_at: datetime | None = None


class GenealogyEdge(SQLModel, table=True):
    """``child`` was made (partly) from ``parent``."""

    __tablename__ = "qdm_genealogy"
    __table_args__ = (
        UniqueConstraint("child_batch_id", "parent_batch_id", name="uq_genealogy_edge"),
    )
    id: int | None = Field(default=None, primary_key=True)
    child_batch_id: str = Field(max_length=64, index=True)
    parent_batch_id: str = Field(max_length=64, index=True)
    quantity_used: float | None = None

    version: int = _version()
    withdrawn_at: datetime | None = None


class Inspection(SQLModel, table=True):
    """One inspection verdict (EL imaging, X-ray, visual), by a person or a model."""

    __tablename__ = "qdm_inspection"
    __table_args__ = (
        Index("ix_inspection_order", "order_id", "id"),
        Index("ix_inspection_time", "inspected_at"),
        Index("ix_inspection_serial", "serial"),
        Index("ix_inspection_station", "station", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    inspection_id: str = Field(max_length=96, unique=True)
    station: str = Field(max_length=64)
    inspected_at: datetime
    verdict: str = Field(max_length=8)
    defect_class: str | None = Field(default=None, max_length=32)
    score: float | None = None
    model_version: str | None = Field(default=None, max_length=80)
    image_hash: str | None = Field(default=None, max_length=64)
    frame_id: str | None = Field(default=None, max_length=96)
    latency_ms: float | None = None
    order_id: str | None = Field(default=None, max_length=64)
    serial: str | None = Field(default=None, max_length=64)
    batch_id: str | None = Field(default=None, max_length=64, index=True)

    version: int = _version()
    withdrawn_at: datetime | None = None


class ProcessMeasurement(SQLModel, table=True):
    """A process parameter reading, stored canonically (``value`` in ``unit``)."""

    __tablename__ = "qdm_measurement"
    __table_args__ = (
        UniqueConstraint("equipment", "parameter", "measured_at", name="uq_measurement"),
        # (column, id): an order's or a batch's readings in id order (`id_merge`)
        Index("ix_measurement_batch", "batch_id", "id"),
        Index("ix_measurement_order", "order_id", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    equipment: str = Field(max_length=64)
    parameter: str = Field(max_length=64)
    element_id: str = Field(max_length=16)
    measured_at: datetime
    value: float
    unit: str = Field(max_length=16)
    grade: str | None = Field(default=None, max_length=8)
    raw_value: str = Field(max_length=64)
    raw_unit: str = Field(max_length=16)
    batch_id: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=64)

    version: int = _version()
    withdrawn_at: datetime | None = None


class EnvironmentReading(SQLModel, table=True):
    """Temperature and humidity at a line location."""

    __tablename__ = "qdm_environment"
    __table_args__ = (UniqueConstraint("location", "measured_at", name="uq_environment"),)
    id: int | None = Field(default=None, primary_key=True)
    location: str = Field(max_length=64)
    measured_at: datetime
    temperature_c: float | None = None
    humidity_rh: float | None = None

    version: int = _version()
    withdrawn_at: datetime | None = None


class OperatorLog(SQLModel, table=True):
    """What an operator did; the operator is known only by a pseudonymous id."""

    __tablename__ = "qdm_operator_log"
    __table_args__ = (
        UniqueConstraint("operator_id", "logged_at", "action", name="uq_operator_log"),
    )
    id: int | None = Field(default=None, primary_key=True)
    operator_id: str = Field(max_length=64)
    logged_at: datetime
    action: str = Field(max_length=64)
    station: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=64, index=True)
    batch_id: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=500)
    version: int = _version()
    withdrawn_at: datetime | None = None


class CalibrationCertificate(SQLModel, table=True):
    """A calibration certificate of a piece of measuring equipment: readings it took
    between ``valid_from`` and ``valid_until`` (and with a result other than ``fail``)
    were taken by calibrated equipment. Anchored like every QDM record when the node
    anchors, so a customer can tell a certificate written after the fact."""

    __tablename__ = "qdm_calibration"
    __table_args__ = (Index("ix_calibration_equipment", "equipment", "valid_from"),)
    id: int | None = Field(default=None, primary_key=True)
    certificate_id: str = Field(max_length=64, unique=True)
    equipment: str = Field(max_length=64)
    valid_from: datetime
    valid_until: datetime
    result: str = Field(max_length=16)
    issuer: str | None = Field(default=None, max_length=128)

    version: int = _version()
    withdrawn_at: datetime | None = None


class Rewrites(SQLModel, table=True):
    """How often the records of one kind were rewritten (corrected or withdrawn).

    A reader that keeps what it made of a table (the console's verdict counts by
    station, a station's SPC chart) and reads only the rows above the last id it saw
    would miss a rewrite: the row moves to a fresh id above, and its old content, which
    the reader already counted, is gone from below. So every rewrite adds to its kind's
    count in the writing transaction (`connector.versions`); while the count stays, the
    rows above a reader's last id are exactly what was added. Inserts do not touch it.
    """

    __tablename__ = "qdm_rewrites"
    kind: str = Field(primary_key=True, max_length=32)
    rewrites: int = Field(default=0, sa_type=BigInteger)


class RecordHistory(SQLModel, table=True):
    """A version of a QDM record as it was before a correction or withdrawal replaced it.

    The record's own row takes the new content (`connector.versions`), so an auditor
    could otherwise see only that it changed: its version number, and the hash of the
    old content the ledger anchored. The replaced content is copied here in the writing
    transaction; a record's versions are its history rows (by ``version``) and its row.
    ``record_key`` is the natural key as JSON text (`versions.key_text`): the record's
    ``id`` moves with every version, ``record_id`` is the id the replaced version had
    (the one the ledger anchored). Not a QDM kind: nothing ingests or shares it.
    """

    __tablename__ = "qdm_record_history"
    __table_args__ = (UniqueConstraint("kind", "record_key", "version", name="uq_record_history"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    record_key: str = Field(max_length=400)
    record_id: int
    version: int
    #: the replaced version's content columns and ``withdrawn_at``, as JSON
    content: str = Field(sa_type=Text)
    replaced_at: datetime
    #: ``correction`` or ``withdrawal``
    replaced_by: str = Field(max_length=16)


#: kind name (as used by ingest, REST and CLI) -> table class
TABLES: dict[str, type[SQLModel]] = {
    "order": Order,
    "product": Product,
    "batch": Batch,
    "genealogy": GenealogyEdge,
    "inspection": Inspection,
    "measurement": ProcessMeasurement,
    "environment": EnvironmentReading,
    "operator_log": OperatorLog,
    "calibration": CalibrationCertificate,
}

#: the natural key of each kind
NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "order": ("order_id",),
    "product": ("serial",),
    "batch": ("batch_id",),
    "genealogy": ("child_batch_id", "parent_batch_id"),
    "inspection": ("inspection_id",),
    "measurement": ("equipment", "parameter", "measured_at"),
    "environment": ("location", "measured_at"),
    "operator_log": ("operator_id", "logged_at", "action"),
    "calibration": ("certificate_id",),
}
