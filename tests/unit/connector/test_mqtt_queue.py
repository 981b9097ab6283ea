"""The MQTT connector's queue is bounded by bytes as well as messages: before, only by
2,000 messages, some 260 MB of 128 KiB packets while the store was behind. A producer
(paho's network thread) waits for room as it does for the count; a message larger than
the whole budget still gets into an empty queue (it would wait for ever otherwise)."""

from __future__ import annotations

import asyncio

import pytest

from qdspace.connector.linein.mqtt_queue import Message, MessageQueue


def message(size: int, mid: int = 1) -> Message:
    return Message(session=1, topic="t/x", payload=b"p" * (size - 3), mid=mid, qos=1)


async def test_full_at_its_byte_budget_and_room_again_after_a_get() -> None:
    queue = MessageQueue(maxsize=100, max_bytes=1000)
    for i in range(3):
        queue.put_nowait(message(400, i))  # 400, 800, 1200 bytes: full from the third on
    assert queue.full() and queue.qsize() == 3 and queue.bytes == 1200
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(message(1))
    assert queue.get_nowait().mid == 0
    assert not queue.full() and queue.bytes == 800
    assert queue.peak_bytes == 1200


async def test_the_count_still_bounds_it() -> None:
    queue = MessageQueue(maxsize=2, max_bytes=1 << 20)
    queue.put_nowait(message(10))
    queue.put_nowait(message(10))
    assert queue.full()


async def test_a_message_over_the_whole_budget_gets_into_an_empty_queue() -> None:
    queue = MessageQueue(maxsize=100, max_bytes=1000)
    await asyncio.wait_for(queue.put(message(5000)), 5)
    assert queue.full() and queue.bytes == 5000
    queue.get_nowait()
    assert queue.bytes == 0 and not queue.full()


async def test_a_producer_waits_until_a_get_makes_room_in_bytes() -> None:
    """The producer waits while the queue holds its budget (2 of 600 bytes), is woken by
    each get, and gets in once the bytes fell below the budget."""
    queue = MessageQueue(maxsize=100, max_bytes=1000)
    queue.put_nowait(message(600, 1))
    queue.put_nowait(message(600, 2))
    waiting = asyncio.create_task(queue.put(message(600, 3)))
    await asyncio.sleep(0)
    assert not waiting.done() and queue.qsize() == 2
    queue.get_nowait()  # 600 bytes left: below the budget
    await asyncio.wait_for(waiting, 5)
    assert [queue.get_nowait().mid for _ in range(2)] == [2, 3]
    assert queue.bytes == 0
