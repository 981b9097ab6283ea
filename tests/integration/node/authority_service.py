"""A real ``authority serve`` process for the service's tests, and how they read its
refusals: the HTTP client verifies it against the authority's own CA."""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
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
    directory: Path,
    space: str,
    host: str = "127.0.0.1",
    hostnames: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """A new authority of data space ``space`` in ``directory``, served until the end (on
    ``host``, its TLS certificate for ``hostnames``: the service's default without; with
    ``env`` added to the process's environment)."""
    authority = Authority.init(directory, space)
    environment = {**os.environ, **(env or {})}
    process = AuthorityProcess(directory, host=host, hostnames=hostnames, env=environment)
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


def client_from(service: Service, source: str) -> httpx.Client:
    """A client of ``service`` whose connections leave from the address ``source`` (Linux
    routes all of 127/8 to lo: each is another caller)."""
    context = ssl.create_default_context(cadata=cert_to_pem(service.authority.cert).decode())
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    return httpx.Client(base_url=service.url, transport=transport, timeout=30)


def foreign_code(directory: Path, space: str) -> str:
    """A well-formed code of another authority (in ``directory``): refused (403) as a
    guessed one is, and worked through first."""
    foreign = Authority.init(directory, space)
    return str(foreign.create_enrollment(name="mole", role="oem"))
