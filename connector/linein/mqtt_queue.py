"""The queue between paho's network thread and the MQTT connector's store loop.

Bounded by messages and by bytes. A count alone bounds memory only as far as messages
are small: the connector's 2,000 messages of up to `MAX_PACKET_BYTES` (128 KiB, what we
tell an MQTT 5 broker we take) were some 260 MB held while the store was behind, and
under MQTT 3.1.1 nothing bounds a message but the broker's ``message_size_limit``. So
the queue is also full once the payloads and topics it holds reach its byte budget.

Back-pressure stays as it was (see :mod:`connector.linein.mqtt`): while the queue is
full, paho's network thread waits for room and reads no more from the broker, and TCP
holds the broker back; nothing is dropped and nothing acknowledged. The queue is full
while it holds its budget or more, so a message is let in while the queue is below it,
however large: a message larger than the whole budget still gets in once the queue is
empty (else it would wait for ever), and the queue overshoots the budget by one message
at most, which paho's thread already holds in memory anyway.

An `asyncio.Queue` (its documented ``full`` and its ``_put``/``_get`` hooks, the ones
`asyncio.PriorityQueue` overrides): `put` waits while `full`, and every `get` wakes the
one waiting producer (there is one: paho's network thread).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """A message paho received, as the store loop reads it."""

    session: int  # which connection it came on (acknowledged only on that one)
    topic: str | None  # None: not UTF-8 (a broker should have refused it)
    payload: bytes
    mid: int
    qos: int

    @property
    def size(self) -> int:
        """What it holds in memory, as the queue counts it: payload and topic."""
        return len(self.payload) + len(self.topic or "")

    @property
    def receipt(self) -> Receipt:
        """What acknowledging it takes (its payload can go once it was read)."""
        return Receipt(self.session, self.mid, self.qos)


@dataclass(frozen=True)
class Receipt:
    session: int
    mid: int
    qos: int


class MessageQueue(asyncio.Queue[Message]):
    """Full at ``maxsize`` messages or at ``max_bytes`` bytes of payload and topic."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        #: payload and topic bytes of the messages queued now
        self.bytes = 0
        #: the most bytes the queue held at once (for tests and the flood measurement)
        self.peak_bytes = 0

    def full(self) -> bool:
        return super().full() or self.bytes >= self.max_bytes

    def _put(self, item: Message) -> None:
        super()._put(item)
        self.bytes += item.size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _get(self) -> Message:
        item = super()._get()
        self.bytes -= item.size
        return item
