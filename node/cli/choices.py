"""The fixed value sets of CLI options, as enums, so a wrong value is a usage error.

Typer turns an ``Enum`` option into a choice: ``--role boss`` stops before the
command runs and names the allowed values. The sets are spelled out here rather than
imported from the domain (``connector.ingest.KINDS`` loads the validator, the ledger
its leaf codes): ``qdspace --help`` must stay light. ``tests/unit/node/test_cli_choices.py``
checks every set against the domain's own.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A member's role in the data space (``node.identity.certs.ROLES``)."""

    OEM = "oem"
    SUPPLIER = "supplier"
    HOST = "host"
    REGULATOR = "regulator"


class QdmKind(StrEnum):
    """A QDM row kind (``connector.ingest.KINDS``)."""

    ORDER = "order"
    PRODUCT = "product"
    BATCH = "batch"
    GENEALOGY = "genealogy"
    INSPECTION = "inspection"
    MEASUREMENT = "measurement"
    ENVIRONMENT = "environment"
    OPERATOR_LOG = "operator_log"
    CALIBRATION = "calibration"


class LeafKind(StrEnum):
    """A kind of anchored record (``ledger.leaves.KIND_CODES``)."""

    INSPECTION = "inspection"
    AGREEMENT = "agreement"
    DELETION_RECEIPT = "deletion_receipt"
    MODEL_VERSION = "model_version"
    RECORD_BATCH = "record_batch"
    QUALITY_CASE = "quality_case"
    TRACE_REPORT = "trace_report"


class CellMember(StrEnum):
    """Whose EL cells: a supplier's (``inference.dataset.SUPPLIER_BY_CELL_TYPE``), all,
    or ``auto`` (the node's own name if it is a supplier, else all)."""

    AUTO = "auto"
    CELLEX = "cellex"
    POLYCELL = "polycell"
    ALL = "all"
