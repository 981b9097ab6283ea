"""The contract clock honours a moved offset only where clock control is on."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qdspace.node.runtime.contracts_clock import ClockControlDisabled, ContractClock


def _clock_file(tmp_path: Path, days: float) -> Path:
    path = tmp_path / "contract-clock.json"
    path.write_text(json.dumps({"offset_s": timedelta(days=days).total_seconds()}))
    return path


def test_an_offset_file_is_ignored_with_a_warning_when_clock_control_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _clock_file(tmp_path, 181)  # left behind by a test network, or planted
    with caplog.at_level(logging.WARNING, logger="node.contracts"):
        clock = ContractClock(path, control=False)
    assert clock.offset == timedelta(0)
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)
    assert "ignored: clock control is off" in caplog.text
    with pytest.raises(ClockControlDisabled):
        clock.set_offset(timedelta(days=1))


def test_an_offset_file_is_honoured_with_clock_control(tmp_path: Path) -> None:
    clock = ContractClock(_clock_file(tmp_path, 181), control=True)
    assert clock.offset == timedelta(days=181)
