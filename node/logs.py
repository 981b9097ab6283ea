"""The node's log lines: plain text by default, JSON lines on request, a request id in both.

An operator who ships logs to a collector asks for JSON (``QDSPACE_LOG_FORMAT=json`` or
``qdspace node start --log-format json``): one object per line on stdout, with the time,
level, logger, message and the request id of the call the line belongs to. The text
format stays exactly as it was.

The request id follows a call through the node in a context variable: the API middleware
(`node.api.observe`) takes it from ``X-Request-Id`` or makes one, the gRPC client
interceptor (`node.rpc.observe`) sends it to peers as ``x-request-id`` metadata, and the
peer's server interceptor sets it again on the receiving side. asyncio copies context
variables into the tasks and worker threads a request starts, so every line logged for
that request carries it without being passed around.

The log file (``node.log``, a host's ``host.log``) rotates: at `LOG_FILE_BYTES` it is
renamed ``node.log.1`` (the older ones moved up to ``.LOG_FILE_KEEP``, the oldest
dropped). Why: every call a member makes is a line, refused ones too, and a member
calling a node as fast as it is answered wrote ~0.5-0.8 GB an hour into a file nothing
ever cut, on the disk the node keeps its database on. Rotated, the log holds at most
(1 + `LOG_FILE_KEEP`) x `LOG_FILE_BYTES` whatever anyone sends.

A process the local network starts (``node start``, ``host start``: `node.localnet`)
writes its stdout and stderr to ``logs/process.log``: the stderr copy of every log line,
and what no handler sees (a crash's traceback, gRPC core's own lines, warnings). That
file is bounded the same way, by the process itself (`keep_output_bounded`, from
`setup_logging`; `util.process_log` says how and why, and the local network's other
processes, which do not log through here, use it too).

A managed host (`node.host`) serves many members in one process, so its lines also name
the member they belong to: `MEMBER` is set for a tenant's servers, jobs and requests
(the tasks they start inherit it), shown as ``[name]`` before a text message and as
``member`` in JSON. A node never sets it, and its lines stay as they were.

A record is one line, whatever its message holds (`one_line`). Messages quote what peers
sent: an id, a name, a refusal's reason. A member that put a line break in a negotiation id
or a federation member name wrote lines of its own making into the provider's log (a
forged ``WARNING`` after a real one), and one that sent 900 KB of it wrote a 900 KB line.
So the text format shows control characters escaped (``\\n``, ``\\x1b``; JSON escapes them
itself), and a message is cut at `MESSAGE_CHARS` with the count of what was left out, in
both formats. A traceback (``exc_info``) keeps its lines, each indented and escaped: its
last line quotes the exception's message, which may be a peer's text too.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qdspace.util.process_log import LOG_FILE_BYTES as LOG_FILE_BYTES
from qdspace.util.process_log import LOG_FILE_KEEP as LOG_FILE_KEEP
from qdspace.util.process_log import PROCESS_LOG_BYTES_ENV as PROCESS_LOG_BYTES_ENV
from qdspace.util.process_log import PROCESS_LOG_ENV as PROCESS_LOG_ENV
from qdspace.util.process_log import keep_output_bounded as keep_output_bounded
from qdspace.util.process_log import process_log_env as process_log_env

REQUEST_ID: ContextVar[str | None] = ContextVar("qdspace_request_id", default=None)
#: the hosted member a line belongs to (a managed host's tenant); None in a node
MEMBER: ContextVar[str | None] = ContextVar("qdspace_member", default=None)
LOG_FORMAT_ENV = "QDSPACE_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the longest message a record shows; the rest is counted (`one_line`)
MESSAGE_CHARS = 8192
#: control characters (C0, DEL, C1) and Unicode's line and paragraph separators, as text
#: that shows them: what some viewers would take for the end of a line is never one
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
#: what a caller's request id may look like; anything else is replaced by a fresh one
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str:
    """The caller's id when it is a short token (it is echoed and logged), else a new one."""
    if value and _REQUEST_ID_SHAPE.match(value):
        return value
    return new_request_id()


def one_line(message: str, escape: bool = True) -> str:
    """``message`` as one line of at most `MESSAGE_CHARS` (and a count of the rest): control
    characters shown escaped (``escape``; JSON, which escapes them itself, passes False)."""
    if len(message) > MESSAGE_CHARS:
        left = len(message) - MESSAGE_CHARS
        message = f"{message[:MESSAGE_CHARS]}... ({left} more characters)"
    return _escaped(message) if escape else message


def _escaped(text: str) -> str:
    """``text`` with its control characters shown escaped (`_ESCAPES`)."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def _indented(text: str) -> str:
    """``text`` (a traceback) with each of its lines indented by two spaces, control
    characters within a line escaped (`one_line`'s escapes, without its cut)."""
    return "\n".join(
        "  " + _escaped(line)
        for line in text.rstrip("\n").split("\n")  # the rest of what ends a line, escaped
    )


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.member = MEMBER.get()
        return True


class _FormatOnce(logging.Formatter):
    """A formatter shared by the node's two handlers (stderr and the log file) formats a
    record once: the second handler gets the text the first one wrote (the provider logs
    four lines per negotiation; bench/PROFILE-negotiation.md, round 5)."""

    def format(self, record: logging.LogRecord) -> str:
        done = record.__dict__.get("_qdspace_formatted")
        if done is not None and done[0] is self:
            return str(done[1])
        text = self._format(record)
        record.__dict__["_qdspace_formatted"] = (self, text)
        return text

    def _format(self, record: logging.LogRecord) -> str:
        return super().format(record)


class TextFormatter(_FormatOnce):
    """`TEXT_FORMAT`, the message led by ``[member]`` on a managed host's tenant lines."""

    def formatException(self, ei: Any) -> str:
        """The traceback, every line of it indented and escaped: its last line quotes the
        exception's message, which may be a peer's text (line breaks and all), and an
        indented line never reads as a record of its own (records start with the time)."""
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        member = getattr(record, "member", None)
        if member:
            record.message = f"[{member}] {record.message}"
        return super().formatMessage(record)


class JsonFormatter(_FormatOnce):
    """One JSON object per record: time, level, logger, message, request id, exception."""

    def _format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": one_line(record.getMessage(), escape=False),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        member = getattr(record, "member", None) or MEMBER.get()
        if member:
            line["member"] = member
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class CallerGoneFilter(logging.Filter):
    """gRPC's "ExecuteBatchError raised in core" ERROR (with a traceback), said as what it is.

    gRPC logs it when a server stream's reply cannot be written because the call ended
    under it: the caller cancelled or its connection dropped a moment before the server
    learnt of it (when it has learnt, gRPC says nothing). A consumer that disconnects
    from a live stream is routine, so its line is INFO, one line, naming the method.
    """

    PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(self.PREFIX):
            method = str(record.msg)[len(self.PREFIX) :].strip()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "a reply of %s was not written: its caller went away",
                (method,),
            )
            record.exc_info = record.exc_text = None
        return True


#: the logger gRPC's core reports servicer errors through
GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


def quiet_callers_gone() -> None:
    """Install `CallerGoneFilter` on gRPC's core logger (once)."""
    core = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(f, CallerGoneFilter) for f in core.filters):
        core.addFilter(CallerGoneFilter())


def log_format(option: str | None = None) -> str:
    """The format asked for: the option, else ``QDSPACE_LOG_FORMAT``, else text."""
    chosen = (option or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format {chosen!r}: use one of {', '.join(LOG_FORMATS)}")
    return chosen


def setup_logging(level: str, logfile: Path | None = None, fmt: str = "text") -> None:
    """Text to stderr (and ``logfile``) as before, or JSON lines to stdout (and ``logfile``,
    rotated at `LOG_FILE_BYTES`)."""
    stream = sys.stdout if fmt == "json" else sys.stderr
    handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                logfile, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_KEEP
            )
        )
    formatter = JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level, handlers=handlers, force=True)
    keep_output_bounded()
    quiet_callers_gone()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # one line per request the node makes to the authority service: its own log says more
    logging.getLogger("httpx").setLevel(logging.WARNING)
