"""The HTTP under the chain client: every answer of a JSON-RPC endpoint read whole within
a deadline and a size, every transport failure a `ChainUnavailable`.

Why its own room: the endpoint is often a third party's (a hosted RPC service), and
``requests`` alone bounds each read, not the answer: an endpoint trickling a byte every
half second held the anchorer (and with it the operator's flush and the readiness probe)
for ever, a 300 MB answer took 1.2 GiB, and a body cut off escaped as an untranslated
``ChunkedEncodingError``. `BoundedSession` is the session web3's provider and the
client's batch requests both post through; `chain_errors` translates what is left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3

from qdspace.ledger.errors import ChainUnavailable
from qdspace.util.redact import redact_url

#: the most an answer of the endpoint may hold (a batch of 256 receipts with their logs is
#: well under 1 MiB; a page of logs under 10 MiB)
MAX_ANSWER_BYTES = 32 * 1024 * 1024


@contextmanager
def chain_errors(url: str) -> Iterator[None]:
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ChainUnavailable(
            f"chain at {redact_url(url)} is unreachable ({type(exc).__name__})"
        ) from None
    except requests.HTTPError as exc:
        raise ChainUnavailable(f"chain at {redact_url(url)} answered HTTP {exc.response}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # a body cut short
        why = type(exc).__name__
        raise ChainUnavailable(f"chain at {redact_url(url)} broke off its answer ({why})") from None


class BoundedSession(requests.Session):
    """A session whose POST reads the whole answer within `deadline_s` and `max_bytes`
    (see the module docstring): the body is read as it arrives, each read bounded by the
    time left, and the answer refused (`ChainUnavailable`) once either is spent. web3's
    provider and the batch requests both post through it."""

    def __init__(self, url: str, deadline_s: float, max_bytes: int) -> None:
        super().__init__()
        self.url, self.deadline_s, self.max_bytes = url, deadline_s, max_bytes

    def post(self, url: Any, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.deadline_s
        kwargs.update(stream=True, timeout=self.deadline_s)
        response = super().post(url, data=data, json=json, **kwargs)
        try:
            response._content = self._body(response, deadline)
        finally:
            response.close()
        return response

    def _body(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        body = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._too_slow()
            _set_read_timeout(response, left)
            try:
                chunk = response.raw.read1(1 << 16)
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                raise self._too_slow() from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > self.max_bytes:
                raise self._too_large()

    def _too_slow(self) -> ChainUnavailable:
        return ChainUnavailable(
            f"chain at {redact_url(self.url)} did not finish its answer "
            f"within {self.deadline_s:g} s"
        )

    def _too_large(self) -> ChainUnavailable:
        return ChainUnavailable(
            f"chain at {redact_url(self.url)} answered more than {self.max_bytes // (1 << 20)} MiB"
        )


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """Bound the next read of `response`'s socket by `seconds` (the answer's time left)."""
    sock = getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(sock, "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))
