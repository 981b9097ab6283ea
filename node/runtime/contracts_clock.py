"""The contract clock: the one time source of a node's contract machinery.

Deadlines, expiry, receipts and the outbox all read `ContractClock`, never the wall
clock directly, so that time can be moved in one place. Its offset can only be moved
when the node was started with ``QDSPACE_CLOCK_CONTROL=1`` (local demo and test
networks), so that a test can jump 181 days and a production node cannot pretend time
passed (an offset file found without clock control is ignored, with a warning). It is a
room of its own because it is the only part of the contract runtime that an operator
route moves directly, and the only one with a safety switch.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from qdspace.node.errors import NodeError
from qdspace.util.files import write_atomic

logger = logging.getLogger("node.contracts")

CLOCK_CONTROL_ENV = "QDSPACE_CLOCK_CONTROL"


class ClockControlDisabled(NodeError, PermissionError):
    """Moving the contract clock is allowed only on local demo and test networks."""


class ContractClock:
    """Real UTC time plus an offset kept in the node directory (0 unless moved)."""

    def __init__(self, path: Path, *, control: bool) -> None:
        self._path = path
        self.control = control
        self.offset = timedelta(0)
        if path.exists() and not control:
            logger.warning(
                "contract clock file %s ignored: clock control is off (%s is not 1)",
                path,
                CLOCK_CONTROL_ENV,
            )
        elif path.exists():
            self.offset = timedelta(seconds=float(json.loads(path.read_text())["offset_s"]))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set_offset(self, offset: timedelta) -> datetime:
        if not self.control:
            raise ClockControlDisabled(
                f"the contract clock can only be moved on a node started with {CLOCK_CONTROL_ENV}=1"
            )
        self.offset = offset
        write_atomic(self._path, json.dumps({"offset_s": offset.total_seconds()}).encode())
        logger.warning("contract clock moved: offset now %s", offset)
        return self.now()
