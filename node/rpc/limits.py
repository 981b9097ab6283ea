"""Resource limits of the peer server: message sizes per method, concurrent calls per peer.

A member is authenticated, not trusted. Without limits one member could open
thousands of streams or send 64 MiB to a method that needs a few hundred bytes and
starve the node for everybody else. The limits are set here, in one place, and
enforced by the interceptor (`node.rpc.auth`) after the caller is authenticated and
before any request is decoded:

- the transport accepts at most ``TRANSPORT_MAX_BYTES`` per message (one federation
  upload chunk and its header), so nothing bigger is even read;
- each method has its own cap (`max_request_bytes`): small for unary calls, chunk-sized
  only for the federation's chunked upload streams, the only way to send bulk data;
- a member may hold ``per_peer_calls`` unary calls and ``per_peer_streams`` streams at
  once on this node, and the node serves at most ``server_calls`` calls in all; a call
  over a cap is refused with RESOURCE_EXHAUSTED and the cap it hit;
- a member may send ``per_peer_rate`` requests a second, ``per_peer_burst`` at once
  (`node.rpc.member_rates`: a token bucket per member, checked by `CallLimiter.pace`
  right after the caller is authenticated): what a member that never holds many calls
  at once, but sends the next the moment one is answered, may take of the node's CPU. A
  request over it is refused with the seconds until the member's next token
  (`RateExceeded`: RESOURCE_EXHAUSTED and a ``retry-after`` trailer, a 429 with
  Retry-After on the DSP listener).

The DSP listener admits against the same limiter (`node.dsp.caps`): one count of calls
and one bucket per member for both doors.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from qdspace.federation.chunks import MAX_CHUNK_BYTES
from qdspace.node.errors import LimitExceeded as LimitExceeded  # their home was here
from qdspace.node.errors import NulInString
from qdspace.node.errors import NumberOutOfRange as NumberOutOfRange
from qdspace.node.rpc.member_rates import MemberRates

KIB = 1024
#: What a unary request may weigh unless its method says otherwise.
UNARY_MAX_BYTES = 256 * KIB
#: One chunk of a chunked federation upload, with room for its header. It follows the
#: largest chunk a sender may cut, not the size this node cuts its own payloads to.
CHUNK_MAX_BYTES = MAX_CHUNK_BYTES + 64 * KIB
#: The transport refuses anything larger before it is read into a message.
TRANSPORT_MAX_BYTES = CHUNK_MAX_BYTES

_FED = "/qdspace.v1.Federation/"
METHOD_MAX_BYTES: Mapping[str, int] = {
    # chunked uploads: the only path for bulk data (model updates, job terms)
    _FED + "StartJob": CHUNK_MAX_BYTES,
    _FED + "UploadUpdate": CHUNK_MAX_BYTES,
    _FED + "UploadMasked": CHUNK_MAX_BYTES,
    # secure aggregation key material grows with the number of members in a round
    _FED + "ShareKeys": 1024 * KIB,
    _FED + "Unmask": 1024 * KIB,
}

DEFAULT_SERVER_CALLS = 512
DEFAULT_PER_PEER_CALLS = 32
DEFAULT_PER_PEER_STREAMS = 8
#: requests a second one member may send to this node, sustained (gRPC calls, a stream
#: counting once, and DSP requests together). Honest peers send a few a second: a
#: transfer or a live stream is one call, a federation round a few calls a member, a
#: negotiation four messages; a benchmark's catalog load (40 calls) and the hostile
#: member test's fuzzing (~300 calls) fit in the burst. A cheap DSP read costs the node
#: about a millisecond of CPU: 100 a second is a tenth of a core for one member, where a
#: tight loop took all of it (past the rate, a request costs only the transport's work:
#: TLS, HTTP/2 or HTTP/1.1 and the certificate; nothing behind it runs).
DEFAULT_PER_PEER_RATE = 100.0
#: requests one member may send at once after a quiet spell (ten seconds at its rate):
#: an outbox's backlog after an outage, a console's burst of reads
DEFAULT_PER_PEER_BURST = 1000


def max_request_bytes(method: str) -> int:
    return METHOD_MAX_BYTES.get(method, UNARY_MAX_BYTES)


@dataclass(frozen=True)
class CallCaps:
    server_calls: int = DEFAULT_SERVER_CALLS
    per_peer_calls: int = DEFAULT_PER_PEER_CALLS
    per_peer_streams: int = DEFAULT_PER_PEER_STREAMS
    per_peer_rate: float = DEFAULT_PER_PEER_RATE
    per_peer_burst: int = DEFAULT_PER_PEER_BURST


class RateExceeded(LimitExceeded):
    """A member's request over its request rate (`CallLimiter.pace`); the message names the
    settings and when to retry. ``report``: whether to log this refusal, for ``refused``
    refusals since the last logged one (a flood is logged once, then summed up:
    `node.rpc.member_rates`)."""

    def __init__(self, message: str, retry_after_s: int, report: bool, refused: int) -> None:
        super().__init__(message)
        #: whole seconds after which the member has a token again (at least 1)
        self.retry_after_s = retry_after_s
        self.report = report
        self.refused = refused


class CallLimiter:
    """Counts the calls in flight, in all and per member (`acquire` holds a slot for one
    call), and paces each member's requests (`pace` takes a token of its bucket).
    ``clock``: seconds on a monotonic scale (a test's own)."""

    def __init__(self, caps: CallCaps, clock: Callable[[], float] = time.monotonic) -> None:
        self.caps = caps
        self._lock = threading.Lock()
        self._total = 0
        self._calls: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._rates = MemberRates(caps.per_peer_rate, caps.per_peer_burst)
        self._clock = clock

    def pace(self, member: str, name: str) -> None:
        """Take a token of `member`'s bucket (display name `name`) for one request, or
        refuse it with `RateExceeded`. Called once the caller is known (its certificate
        verified) and before anything of its request is read."""
        verdict = self._rates.take(member, self._clock())
        if verdict.admitted:
            return
        retry = max(1, math.ceil(verdict.wait_s))
        caps = self.caps
        raise RateExceeded(
            f"member {name} is over its request rate on this node (rpc_rate_per_peer "
            f"{caps.per_peer_rate:g} a second, rpc_burst_per_peer {caps.per_peer_burst}); "
            f"retry in {retry} s",
            retry,
            verdict.report,
            verdict.refused,
        )

    def acquire(self, member: str, name: str, *, stream: bool) -> Callable[[], None]:
        """Hold a slot for one call of `member` (display name `name`); returns its release."""
        counts = self._streams if stream else self._calls
        cap = self.caps.per_peer_streams if stream else self.caps.per_peer_calls
        with self._lock:
            if self._total >= self.caps.server_calls:
                raise LimitExceeded(
                    f"this node is serving {self._total} calls (limit {self.caps.server_calls}); "
                    "retry later"
                )
            held = counts.get(member, 0)
            if held >= cap:
                kind = "streams" if stream else "calls"
                raise LimitExceeded(
                    f"member {name} has {held} {kind} open on this node (limit {cap}); "
                    "close one before opening another"
                )
            counts[member] = held + 1
            self._total += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._total -= 1
                left = counts[member] - 1
                if left:
                    counts[member] = left
                else:
                    del counts[member]

        return release


#: Timestamps on the wire (``*_unix_us``, ``*_unix_ms``) lie between 1970 and 9999.
_TIME_SUFFIXES = {"_unix_us": 253_402_300_799_999_999, "_unix_ms": 253_402_300_799_999}


def check_values(message: Message, path: str = "") -> None:
    """Every float/double anywhere in `message` must be finite (NaN passes no range check,
    so a NaN score or bound would slip through every later comparison), every timestamp
    a date (a year-300000 timestamp overflows the code that reads it), and every string
    free of NUL characters (an id with one reached PostgreSQL, which refuses it in any
    string: a member's lookup was an INTERNAL error)."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        limit = next((v for k, v in _TIME_SUFFIXES.items() if field.name.endswith(k)), None)
        if limit is not None and not field.is_repeated and isinstance(value, int):
            if not 0 <= value <= limit:
                raise NumberOutOfRange(
                    f"field {where} is {value}; not a time between 1970 and 9999"
                )
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            values = value if _repeated(field) else [value]
            for v in values:
                if not math.isfinite(v):
                    raise NumberOutOfRange(f"field {where} is {v}; numbers must be finite")
        elif field.type == FieldDescriptor.TYPE_STRING:
            _check_strings(value if _repeated(field) else [value], where)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                _check_strings([k for k in value if isinstance(k, str)], f"{where} (a key)")
                for item in value.values():
                    if isinstance(item, Message):
                        check_values(item, f"{where}.")
                    elif isinstance(item, float) and not math.isfinite(item):
                        raise NumberOutOfRange(f"field {where} is {item}; numbers must be finite")
                    elif isinstance(item, str):
                        _check_strings([item], where)
            elif _repeated(field):
                for i, item in enumerate(value):
                    check_values(item, f"{where}[{i}].")
            else:
                check_values(value, f"{where}.")


def _check_strings(values: Iterable[str], where: str) -> None:
    for text in values:
        if "\x00" in text:
            raise NulInString(f"field {where} holds a NUL character; no string may")


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)
