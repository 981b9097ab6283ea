"""The host operator's calls to a running host (``qdspace host tenant suspend`` while
``host start`` runs): the host-management API over HTTPS, verified against the host's CA.

A suspension must take effect in the running process (its streams end, its port
refuses), so with a host running the CLI asks it; with none running the CLI changes the
registry directly and the next ``host start`` applies it. Light on purpose (httpx only):
the CLI imports it on every host command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qdspace.node.errors import NodeError
from qdspace.node.host.config import HostLayout
from qdspace.util.files import read_json_record

TIMEOUT_S = 30.0


class HostApiError(NodeError):
    """The running host refused or could not be reached; the message says which."""


def read_host_runtime(directory: Path) -> dict[str, Any] | None:
    """The runtime record ``host start`` wrote in ``directory`` (here, not in the serving
    module: reading it must not import the host's server stack), or None."""
    return read_json_record(HostLayout(directory.resolve()).runtime)


def running_host(directory: Path) -> dict[str, Any] | None:
    """The runtime record of a host running from ``directory``, or None."""
    record = read_host_runtime(directory)
    if record is None:
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return None
    except PermissionError:
        pass  # alive, another user's
    return record


def call_host(
    directory: Path, record: dict[str, Any], method: str, path: str, body: Any = None
) -> Any:
    """One call to the running host's management API with the host token."""
    import httpx

    # node config, numpy: imported only by the commands that call the host
    from qdspace.node.host.tenants import load_host_token

    files = HostLayout(directory.resolve())
    token = load_host_token(files)
    try:
        with httpx.Client(
            base_url=str(record["api"]), verify=str(record["ca_file"]), timeout=TIMEOUT_S
        ) as http:
            response = http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        raise HostApiError(f"host at {record['api']}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise HostApiError(f"{method} {path}: {response.status_code}: {detail}")
    return response.json()
