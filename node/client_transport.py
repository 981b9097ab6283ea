"""How a client reaches a node's operator API: finding it, verifying its TLS, reading
its failures.

Split from `node.client` (the one operator-API client, a method per route) so that file
keeps to its routes: here is what every caller needs before and after a route, the
errors a call ends in (`ClientError`: a problem answer, or no answer), finding the node
that runs in a directory (its run file and operator token), the TLS verification (the
space CA from the run file, a CA file given for a remote node, or the system's trust
store) and the raw bearer client. Standard library only at import time, as `node.client`
(``httpx`` is imported when a client is built), so the CLI starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from qdspace.node.errors import NodeError
from qdspace.node.layout import NodeLayout
from qdspace.util.files import read_json_record

if TYPE_CHECKING:
    import ssl

    import httpx

DEFAULT_TIMEOUT_S = 300.0


class ClientError(NodeError):
    """A call to a node's API failed: the node answered with a problem, or not at all.

    ``status`` is the HTTP status of the answer (``None`` when no answer came:
    connection refused, timeout, no run file); ``title`` and ``detail`` are the
    problem's (RFC 9457), or the raw body when the answer was not a problem.
    """

    def __init__(
        self, status: int | None, title: str, detail: str, *, method: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.method = method
        self.path = path
        where = f"{method} {path}: " if path else ""
        code = "" if status is None else f"{status} "
        head = f"{code}{title}" if title else code.strip()
        super().__init__(f"{where}{head}: {detail}" if head else f"{where}{detail}")


class NodeNotRunning(ClientError):
    """The node directory has no ``run/runtime.json``: its node is not running."""

    def __init__(self, message: str) -> None:
        super().__init__(None, "", message)


class NodeUnreachable(ClientError):
    """No answer came from the node's API (connection refused, reset, timed out)."""


def runtime_file(directory: Path) -> Path:
    """``DIR/run/runtime.json``."""
    return NodeLayout(directory).runtime


def read_runtime(directory: Path) -> dict[str, object] | None:
    """The running node's published runtime record, or None if it is not running."""
    return read_json_record(runtime_file(directory))


def locate(directory: Path) -> tuple[str, str, Path | None]:
    """The API address, operator token and CA file of the node running in ``directory``."""
    directory = directory.resolve()
    runtime = read_runtime(directory)
    if runtime is None:
        raise NodeNotRunning(f"node in {directory} is not running (no run/runtime.json)")
    try:
        token = NodeLayout(directory).operator_token.read_text().strip()
    except OSError as exc:
        raise NodeNotRunning(f"{NodeLayout(directory).operator_token}: {exc.strerror}") from None
    ca = runtime.get("ca_file")
    return str(runtime["api"]), token, Path(str(ca)) if ca else None


def tls_verification(ca_file: Path | None = None, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """What a client verifies a node's certificate with: the CA in ``ca_file`` or
    ``ca_pem``, else the system's trust store; hostnames are always checked."""
    import ssl

    if ca_pem is not None:
        return ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise ClientError(None, "", f"CA file {ca_file} not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise ClientError(None, "", f"CA file {ca_file} is no PEM certificate: {exc}") from None


def problem_of(response: httpx.Response) -> ClientError:
    """The :class:`ClientError` a failed answer stands for (problem body or raw text)."""
    title, detail = "", response.text
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or "")
        if "detail" in body:
            raw = body["detail"]
            detail = raw if isinstance(raw, str) else json.dumps(raw)
    if not title:
        title = response.reason_phrase
    return ClientError(
        response.status_code,
        title,
        detail,
        method=response.request.method,
        path=response.request.url.path,
    )


def http_client(
    api_url: str,
    token: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
    *,
    ca_file: Path | None = None,
    ca_pem: bytes | None = None,
) -> httpx.Client:
    """A raw HTTPS client on a node's API, sending ``token`` as its bearer (none if empty)
    and verifying the node against ``ca_file``/``ca_pem`` (`tls_verification`): what
    `OperatorClient` wraps, and what callers that send deliberately unusual requests use
    directly."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=api_url,
        headers=headers,
        timeout=timeout,
        transport=transport,
        verify=tls_verification(ca_file, ca_pem),
    )


def operator_client(directory: Path, timeout: float = DEFAULT_TIMEOUT_S) -> httpx.Client:
    """A raw HTTPS client on the running node's operator API, with its bearer token
    (for callers that send deliberately unusual requests; others use OperatorClient)."""
    api_url, token, ca_file = locate(directory)
    return http_client(api_url, token, timeout, ca_file=ca_file)
