"""``qdspace authority serve``: the authority app under uvicorn, over TLS only.

The port is bound before anything starts (port 0 picks a free one), the server
certificate is issued by the CA for ``--hostname`` names (`node.authority.tls`), and
``AUTHORITY/run/authority.json`` records the pid and URL while the service runs, so
tests and scripts that asked for port 0 can find it. SIGTERM or SIGINT stop it.

It is the most exposed listener of a data space (anyone with the URL may ask for an
enrollment), so it closes a connection whose request head is late as the node's
listeners do (`node.http_listener.HeadDeadlineH11`): uvicorn times only idle keep-alive
connections, and connections that sent half a request, or nothing, were held for as
long as their clients liked.

Callers are counted by the address they connect from. Behind a reverse proxy, name it
(``--trusted-proxy``, or ``$QDSPACE_AUTHORITY_TRUSTED_PROXIES``): from it alone the
caller's address is read from X-Forwarded-For (`node.authority.forwarded`). uvicorn's
own reading of that header is off: it believed any local caller's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from qdspace.node.authority.app import create_authority_app
from qdspace.node.authority.forwarded import NO_PROXIES, TrustedProxies
from qdspace.node.authority.service import AuthorityService
from qdspace.node.authority.tls import DEFAULT_HOSTNAMES, ensure_server_cert
from qdspace.node.http_listener import HeadDeadlineH11
from qdspace.node.listeners import bind_socket
from qdspace.util.files import read_json_record, write_atomic

logger = logging.getLogger("node.authority")

DEFAULT_PORT = 8600  # not 9443: that is a node's regulator listener


def service_url(host: str, port: int, hostnames: Sequence[str]) -> str:
    """The URL members reach the service at: the first hostname, else the bound host."""
    name = hostnames[0] if hostnames else host
    if name in ("0.0.0.0", "::"):
        name = "localhost"
    return f"https://[{name}]:{port}" if ":" in name else f"https://{name}:{port}"


def read_runtime(directory: Path) -> dict[str, object] | None:
    """What a running ``authority serve`` in ``directory`` wrote (pid, url), if any."""
    from qdspace.node.layout import AuthorityLayout

    return read_json_record(AuthorityLayout(directory).runtime)


def serve_authority(
    directory: Path,
    host: str,
    port: int,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    proxies: TrustedProxies = NO_PROXIES,
    *,
    allow_local_endpoints: bool = False,
) -> None:
    """Serve the authority in ``directory`` until SIGTERM/SIGINT, reading callers'
    addresses from the X-Forwarded-For of ``proxies`` only (none by default), taking
    directory entries with loopback and private addresses if ``allow_local_endpoints``
    (`AuthorityService`)."""
    service = AuthorityService.open(directory, allow_local_endpoints=allow_local_endpoints)
    names = list(dict.fromkeys([*hostnames] or DEFAULT_HOSTNAMES))
    files = service.files
    if ensure_server_cert(files, service.authority.cert, service.ca_key, names):
        logger.info("authority: server certificate issued for %s", ", ".join(names))
    sock = bind_socket("authority", host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        create_authority_app(service, proxies),
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is read from trusted proxies only
        ssl_certfile=str(files.server_cert),
        ssl_keyfile=str(files.server_key),
        http=HeadDeadlineH11,
    )
    server = uvicorn.Server(config)
    url = service_url(host, bound, names)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            runtime = {"pid": os.getpid(), "url": url, "started_at": time.time()}
            write_atomic(files.runtime, json.dumps(runtime).encode(), mode=0o644)
            logger.info("authority %s serving on %s", service.space, url)
            if proxies:
                logger.info("authority: callers behind trusted proxies %s", proxies)
        try:
            await task
        finally:
            files.runtime.unlink(missing_ok=True)

    try:
        asyncio.run(main())
    finally:
        sock.close()
    logger.info("authority %s stopped", service.space)
