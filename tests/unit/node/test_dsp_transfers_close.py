"""`DspTransfers.close` ends the data planes a node receives and waits for them: a batch
being stored when it is called is stored to its end before `close` returns (a suspended
or reopened hosted tenant's database is closed, or opened again, right after), no data
plane opens after it, and the DSP client's connections are closed.

In-process, a real `DspTransfers`; its data plane stands for a pull whose commit (a
database write in a worker thread, as `_commit` runs it) the test holds. Nothing timed:
the event loop is let run a fixed number of steps, which is far more than a cancelled
task needs to end."""

from __future__ import annotations

import asyncio
import threading

from qdspace.connector import dsp_transfer as wire
from qdspace.node.dsp import transfer_consumer
from qdspace.node.dsp.transfer_consumer import Delivery, DspTransfers

#: loop steps in which a cancelled task that does not wait for anything has ended
STEPS = 50


class _Client:
    """Stands for the node's `DspHttp` (only its close is called here)."""

    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def test_close_waits_for_the_batch_being_stored_and_opens_no_data_plane_again() -> None:
    async def scenario() -> None:
        entered, release = threading.Event(), threading.Event()
        stored: list[str] = []

        def commit() -> None:  # in its worker thread, as the store's commit runs
            entered.set()
            assert release.wait(60)
            stored.append("batch")

        async def pull(local_id: str, delivery: Delivery) -> bool:
            while True:  # batch after batch, as long as the provider sends them
                await transfer_consumer._to_end(asyncio.to_thread(commit))

        client = _Client()
        transfers = DspTransfers(moves=None, http=client)  # type: ignore[arg-type]
        transfers._pull = pull  # type: ignore[method-assign]
        address = wire.DataAddress("https://provider/data/x", "token", wire.BATCHES)
        transfers.delivery("t-1").address = address
        transfers.start_pull("t-1")
        task = transfers.deliveries["t-1"].task
        assert task is not None
        await asyncio.to_thread(entered.wait, 60)  # a batch is being committed

        closing = asyncio.create_task(transfers.close())
        try:
            for _ in range(STEPS):
                await asyncio.sleep(0)
            assert task.cancelling()  # asked to end ...
            assert not task.done() and not closing.done()  # ... once its batch is stored
            assert stored == []
        finally:
            release.set()
        await closing
        assert stored == ["batch"] and task.done()  # stored before close returned
        assert client.closed == 1

        transfers.delivery("t-2").address = address  # an answer arriving late
        transfers.start_pull("t-2")
        transfers.start_pull("t-1")
        assert transfers.deliveries["t-2"].task is None and transfers.deliveries["t-1"].task is task
        await transfers.close()  # twice is fine
        assert client.closed == 2

    asyncio.run(scenario())
