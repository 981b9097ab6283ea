"""The node's log formatters: a record formatted once serves both handlers, and only them.

`node.logs` gives the node's two handlers (stderr and the log file) one formatter, which
keeps the text of the record it formatted last (bench/PROFILE-negotiation.md, round 5).
These check that the text is the formatter's own: the same line in both handlers, a
handler with another formatter gets its own format, and a hosted member's prefix is there
once.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from qdspace.node import logs
from qdspace.node.logs import MEMBER, JsonFormatter, RequestIdFilter, TextFormatter


def _logger(*formatters: logging.Formatter) -> tuple[logging.Logger, list[io.StringIO]]:
    logger = logging.getLogger(f"test.logs.{id(formatters)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    streams = []
    for formatter in formatters:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        streams.append(stream)
    return logger, streams


def test_one_formatter_on_two_handlers_writes_the_same_line_to_both() -> None:
    shared = TextFormatter("%(levelname)s %(name)s: %(message)s")
    logger, (first, second) = _logger(shared, shared)
    token = MEMBER.set("cellex")
    try:
        logger.info("negotiation %s: %s", "neg-1", "REQUESTED")
    finally:
        MEMBER.reset(token)
    line = first.getvalue()
    assert line == second.getvalue()
    assert line.count("[cellex]") == 1
    assert line.endswith("[cellex] negotiation neg-1: REQUESTED\n")


def test_handlers_with_other_formatters_each_get_their_own_format() -> None:
    logger, (text, as_json, other_text) = _logger(
        TextFormatter("%(levelname)s: %(message)s"),
        JsonFormatter(),
        TextFormatter("%(name)s | %(message)s"),
    )
    logger.info("grpc %s peer=%s", "/qdspace.v1.Negotiation/Send", "sunarc")
    assert text.getvalue() == "INFO: grpc /qdspace.v1.Negotiation/Send peer=sunarc\n"
    record = json.loads(as_json.getvalue())
    assert record["message"] == "grpc /qdspace.v1.Negotiation/Send peer=sunarc"
    assert record["level"] == "INFO"
    assert (
        other_text.getvalue() == f"{logger.name} | grpc /qdspace.v1.Negotiation/Send peer=sunarc\n"
    )


def test_the_log_file_rotates_and_holds_a_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's calls are lines of the log, refused ones too, as fast as it calls: the
    file rotates at `LOG_FILE_BYTES` and keeps `LOG_FILE_KEEP` older ones (it grew
    without end), and the newest lines are in the file named as before."""
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 4096)
    monkeypatch.setattr(logs, "LOG_FILE_KEEP", 2)
    logfile = tmp_path / "logs" / "node.log"
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    try:
        logs.setup_logging("INFO", logfile)
        flood = logging.getLogger("node.rpc")
        for i in range(2000):
            flood.info("grpc /qdspace.v1.Negotiation/Send peer=mallory refused call %d", i)
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
    files = sorted(p.name for p in logfile.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]
    total = sum(p.stat().st_size for p in logfile.parent.iterdir())
    assert total <= 3 * 4096
    assert "refused call 1999" in logfile.read_text()


def test_a_message_quoting_a_peer_is_one_line_of_bounded_length() -> None:
    """A member put a line break in an id the node quotes in a refusal: the text log showed
    the forged line after it as a line of the node's own. And a 900 KB id was a 900 KB
    line. A message is now one line (control characters escaped) cut at MESSAGE_CHARS."""
    logger, (text, as_json) = _logger(TextFormatter("%(levelname)s: %(message)s"), JsonFormatter())
    forged = "neg-1\n2026-12-07 11:00:00,000 WARNING node.rpc: forged\r\x1b[2K\u2028"
    logger.warning("no negotiation %s here", forged)
    logger.warning("no negotiation %s here", "x" * 900_000)
    lines = text.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        "WARNING: no negotiation neg-1\\n2026-12-07 11:00:00,000 WARNING node.rpc: "
        "forged\\r\\x1b[2K\\u2028 here"
    )
    assert len(lines[1]) < logs.MESSAGE_CHARS + 100
    left = len("no negotiation ") + 900_000 + len(" here") - logs.MESSAGE_CHARS
    assert lines[1].endswith(f"... ({left} more characters)")
    first, second = map(json.loads, as_json.getvalue().splitlines())
    assert first["message"] == f"no negotiation {forged} here"  # JSON escapes it itself
    assert len(second["message"]) < logs.MESSAGE_CHARS + 100


def test_a_traceback_keeps_its_lines_indented_and_escaped() -> None:
    """A traceback's last line quotes the exception's message, which may be a peer's
    text: every traceback line is indented (a record starts with its time, so none can
    read as a record of its own) and its control characters escaped."""
    logger, (text,) = _logger(TextFormatter("%(asctime)s %(levelname)s: %(message)s"))
    try:
        raise RuntimeError("peer said x\n2026-12-07 11:00:00,000 WARNING forged\u2028end")
    except RuntimeError:
        logger.exception("a fault")
    lines = text.getvalue().splitlines()
    assert (
        lines[0].endswith("ERROR: a fault") and lines[1] == "  Traceback (most recent call last):"
    )
    assert all(line.startswith("  ") for line in lines[1:])
    assert lines[-2:] == [
        "  RuntimeError: peer said x",
        "  2026-12-07 11:00:00,000 WARNING forged\\u2028end",
    ]
