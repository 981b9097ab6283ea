"""Frames survive a lost replica: each judge call is retried, boundedly, then given up loudly.

On a cluster a replica dies with its node, and the frames it held fail with it (Ray
reports the actor died or is unavailable; a frame sent while the handle still routes to
the dead replica fails the same way). Judging is a pure function of the frame and the
model, so asking again is always safe: ``RetryingJudge`` sends a failed frame again
after a short back-off, and the Serve handle, which has learned from the failure,
routes it to a replica that is alive. A frame that still fails after ``attempts`` tries
raises ``FrameDroppedError``; the line counts it and raises a ``judge_failed`` alarm,
so no frame is ever lost without a count and an alarm.

The wrapper also keeps the tier's books (frames served, frames retried, retry calls,
frames given up) and notes verdicts from a model version other than the one the
service expects, which is how a replica restarted on the original version after a swap
is noticed (see ``inference.service``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from qdspace.inference.errors import ServingError
from qdspace.inference.line import Judge
from qdspace.inference.verdicts import FrameRequest, ServedVerdict

DEFAULT_ATTEMPTS = 4
#: waits before the 2nd, 3rd, 4th... try: long enough for the handle to learn that a
#: replica died (its calls fail fast once it has), short enough to stay under the
#: line's in-flight window
DEFAULT_BACKOFF_S = (0.2, 1.0, 3.0)


class FrameDroppedError(ServingError):
    """A frame could not be judged after every try: counted as dropped and alarmed."""

    def __init__(self, frame_id: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"frame {frame_id} dropped after {attempts} tries: {last!r}")
        self.frame_id = frame_id
        self.attempts = attempts


@dataclass(frozen=True)
class RetryCounts:
    """The tier's books: every frame sent is served or dropped, some after retries."""

    sent: int
    served: int
    retried_frames: int
    retries: int
    dropped: int
    in_flight: int


class RetryingJudge:
    """A judge that retries a failed frame ``attempts`` times before dropping it."""

    def __init__(
        self,
        judge: Judge,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    ) -> None:
        if attempts < 1:
            raise ServingError(f"a judge needs at least one attempt, not {attempts}")
        self._judge = judge
        self._attempts = attempts
        self._backoff_s = backoff_s or (0.0,)
        self._lock = threading.Lock()
        self._sent = self._served = self._retried = self._retries = self._dropped = 0
        self._expected: str | None = None
        self._stale_at: float | None = None

    def expect(self, version: str | None) -> None:
        """Verdicts from now on should name ``version``; others are noted as stale."""
        with self._lock:
            self._expected = version
            self._stale_at = None

    def stale_since(self) -> float | None:
        """``time.monotonic()`` of the latest verdict from an unexpected version, if any."""
        with self._lock:
            return self._stale_at

    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        with self._lock:
            self._sent += 1
        last: BaseException | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s[min(attempt - 1, len(self._backoff_s) - 1)])
                with self._lock:
                    self._retries += 1
                    self._retried += attempt == 1
            try:
                verdict = await self._judge(request)
            except Exception as exc:  # judging is pure: any tier failure may be asked again
                last = exc
                continue
            self._served_one(verdict)
            return verdict
        with self._lock:
            self._dropped += 1
        assert last is not None
        raise FrameDroppedError(request.frame_id, self._attempts, last)

    def _served_one(self, verdict: ServedVerdict) -> None:
        with self._lock:
            self._served += 1
            if self._expected is not None and verdict.model_version not in (None, self._expected):
                self._stale_at = time.monotonic()

    def counts(self) -> RetryCounts:
        """A consistent snapshot of the books."""
        with self._lock:
            done = self._served + self._dropped
            return RetryCounts(
                self._sent,
                self._served,
                self._retried,
                self._retries,
                self._dropped,
                self._sent - done,
            )
