"""Time limits on a member's upload stream, from its header to its last chunk.

A member's update (or masked input) holds, from its header on, the member's one upload
slot for the job (`FederationJobs.upload`) and a buffer of up to the model's size
(50 MB). Nothing limited how long that lasted: a member could send a valid header and
then stall, or trickle a byte now and then, and keep both for good, even after the
round it was for had closed. So every upload stream gets three limits, fixed when its
header is taken, and ends with ``DEADLINE_PASSED`` at the first it passes (the slot is
then free, the buffer dropped):

- an **idle limit** between two chunks (``UploadTimes.idle_s``): an honest member sends
  its chunks back to back, so a long silence is a stall;
- a **deadline**: the phase's deadline plus ``UploadTimes.slack_s``, so a trickle ends
  too (an update finished after the phase's deadline is refused anyway: its round has
  closed by then);
- the **round**: when the round or attempt the upload was claimed in closes (another
  call closed it), the upload is over, whatever its pace.

Plain asyncio on the request iterator, apart from the servicer: the gRPC adapter only
reads what ``paced`` yields.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.node.runtime.federation_slots import JobSlot, job_state

#: Longest silence between two chunks of an upload, in seconds: a chunk is at most a
#: few MB, which an honest member sends in well under this on any working link.
UPLOAD_IDLE_S = 30.0
#: How long after its phase's deadline an upload stream may still run, in seconds.
UPLOAD_SLACK_S = 10.0


@dataclass(frozen=True, slots=True)
class UploadTimes:
    """The limits every upload stream runs under (``FederationJobs(upload_times=...)``)."""

    idle_s: float = UPLOAD_IDLE_S
    slack_s: float = UPLOAD_SLACK_S


@dataclass(frozen=True, slots=True)
class StreamWatch:
    """One upload's limits, fixed when its header was taken: ``deadline`` in the event
    loop's time, ``state`` the job's round, attempt and phase then."""

    slot: JobSlot
    what: str
    deadline: float
    idle_s: float
    state: tuple[int, int, str]

    def refusal(self, why: str) -> UpdateRefused:
        return UpdateRefused(RefusalReason.DEADLINE_PASSED, f"{self.what}: {why}")

    def moved_on(self) -> bool:
        return job_state(self.slot.host)[:3] != self.state

    async def round_closed(self) -> None:
        """Return once the round or attempt the upload was claimed in has closed."""
        while True:
            changed = self.slot.changed  # replaced on every change: take it before looking
            if self.moved_on():
                return
            await changed.wait()


async def paced(watch: StreamWatch, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The messages of ``requests``, each within ``watch``'s limits; a refusal
    (``DEADLINE_PASSED``) at the first limit passed. The caller's read of the stream
    ends with it, which frees the member's upload slot."""
    loop = asyncio.get_running_loop()
    closing = asyncio.ensure_future(watch.round_closed())
    try:
        while True:
            left = watch.deadline - loop.time()
            if left <= 0:
                raise watch.refusal("the stream ran past its phase's deadline")
            reading = asyncio.ensure_future(anext(requests))
            done, _ = await asyncio.wait(
                (reading, closing),
                timeout=min(left, watch.idle_s),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if reading in done:
                try:
                    message = reading.result()
                except StopAsyncIteration:
                    return
                yield message
                continue
            reading.cancel()
            with contextlib.suppress(BaseException):  # the call is refused below
                await reading
            if closing in done:
                raise watch.refusal(
                    f"round {watch.state[0]} attempt {watch.state[1]} closed while it was sent"
                )
            if watch.deadline - loop.time() <= 0:
                raise watch.refusal("the stream ran past its phase's deadline")
            raise watch.refusal(f"no data for {watch.idle_s:g} s: the stream stalled")
    finally:
        closing.cancel()
