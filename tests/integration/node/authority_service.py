"""A real ``authority serve`` process for the service's tests, and how they read its
refusals: the HTTP client verifies it against the authority's own CA."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem
from qdspace.node.localnet.authority import AuthorityProcess


@dataclasses.dataclass
class Service:
    authority: Authority
    process: AuthorityProcess
    url: str
    http: httpx.Client

    def post(self, path: str, body: Any) -> httpx.Response:
        response = self.http.post(path, json=body)
        assert response.status_code < 500, response.text
        return response


@contextmanager
def authority_service(
    directory: Path, space: str, host: str = "127.0.0.1", hostnames: Sequence[str] = ()
) -> Iterator[Service]:
    """A new authority of data space ``space`` in ``directory``, served until the end (on
    ``host``, its TLS certificate for ``hostnames``: the service's default without)."""
    authority = Authority.init(directory, space)
    process = AuthorityProcess(directory, host=host, hostnames=hostnames)
    url = process.start()
    context = ssl.create_default_context(cadata=cert_to_pem(authority.cert).decode())
    http = httpx.Client(base_url=url, verify=context, timeout=30)
    try:
        yield Service(authority, process, url, http)
    finally:
        http.close()
        process.stop()


def problem(response: httpx.Response, status: int, needle: str) -> None:
    """``response`` is an RFC 9457 problem of ``status`` whose detail says ``needle``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.json()["detail"], response.json()
    assert "Traceback" not in response.text
