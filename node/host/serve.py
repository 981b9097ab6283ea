"""``qdspace host start``: open the tenants, serve them all in one loop until SIGTERM.

The order is a node's: everything that can fail for the host as a whole (settings, the
master key, the host token, the listener's certificate, its port) is checked before any
tenant starts, so a host that cannot run says so in one line. The loop's worker threads
are shared among the tenants in turns before anything uses them (`workers`). Then each
tenant opens and starts on its own (`runtime.HostRuntime`: a tenant that fails is
reported and skipped), and the one operator listener comes up. While it runs the host writes
``HOST/run/host.json`` (pid, the listener's URL and CA file, each tenant's gRPC address
and state, the seconds the start took).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from qdspace.node.host.config import HostLayout, HostSettings, check_environment
from qdspace.node.host.dispatch import HostDispatcher, create_host_app
from qdspace.node.host.runtime import HostRuntime
from qdspace.node.host.tenants import load_host_token, load_master_key
from qdspace.node.host.workers import default_threads, install_worker_shares
from qdspace.node.listeners import bind_socket, check_server_tls, https_url
from qdspace.util.files import write_atomic
from qdspace.util.recursion import hold_recursion_limit

logger = logging.getLogger("node.host")


def _listener_tls(files: HostLayout, settings: HostSettings) -> tuple[Path, Path]:
    """The listener's certificate, reissued by the host CA when names change or it ages."""
    from qdspace.node.authority.tls import ensure_server_cert
    from qdspace.node.identity.certs import load_cert, load_key

    tls = files.tls
    ca_cert = load_cert(tls.ca_cert, "host operator CA certificate")
    ca_key = load_key(tls.ca_key, "host operator CA key")
    ensure_server_cert(tls, ca_cert, ca_key, settings.hostnames)
    check_server_tls(tls.server_cert, tls.server_key, "host operator API")
    return tls.server_cert, tls.server_key


def _runtime_record(
    files: HostLayout, settings: HostSettings, runtime: HostRuntime, port: int, took: float
) -> dict[str, Any]:
    host = settings.api_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown else shown
    tenants = {
        t.name: {
            "member_id": t.record.member_id,
            "status": t.status,
            "grpc": f"{t.ctx.settings.grpc_host}:{t.member.port}"
            if t.ctx is not None and t.member is not None
            else None,
            "regulator": https_url(t.ctx.settings.regulator_host, t.regulator_port)
            if t.ctx is not None and t.regulator_port
            else None,
        }
        for t in runtime.tenants.values()
    }
    return {
        "pid": os.getpid(),
        "api": f"https://{shown}:{port}",
        "ca_file": str(files.tls.ca_cert),
        "tenants": tenants,
        "start_seconds": round(took, 3),
        "started_at": time.time(),
    }


def run_host(directory: Path) -> None:
    """Load, open and serve every tenant of the host until SIGTERM/SIGINT."""
    from qdspace.node.run import https_server, start_listener

    hold_recursion_limit()  # before any tenant's or peer's byte is read (util.recursion)
    started = time.perf_counter()
    directory = directory.resolve()
    files = HostLayout(directory)
    check_environment(os.environ)  # before anything of a tenant is opened
    settings = HostSettings.load(directory)
    master = load_master_key(files)
    host_token = load_host_token(files)
    cert, key = _listener_tls(files, settings)
    runtime = HostRuntime(directory, settings, master)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        threads = settings.worker_threads or default_threads()
        install_worker_shares(loop, threads, settings.http_worker_threads)  # before any use
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sock = bind_socket("host operator API", settings.api_host, settings.api_port)
        await asyncio.to_thread(runtime.open_all)
        await runtime.start_all()
        host_app = create_host_app(runtime, host_token, time.time())
        server = https_server(
            HostDispatcher(runtime, host_token, host_app),
            cert,
            key,
            lifespan="off",
            grace=settings.shutdown_grace_s,
        )
        task = await start_listener(server, sock)
        warm = asyncio.create_task(runtime.warm_apps())  # tenants' API apps, after the start
        took = time.perf_counter() - started
        record = _runtime_record(files, settings, runtime, sock.getsockname()[1], took)
        files.runtime.parent.mkdir(exist_ok=True)
        write_atomic(files.runtime, json.dumps(record, indent=2).encode())
        failed = sorted(t.name for t in runtime.tenants.values() if t.error)
        logger.info(
            "host serving %d tenants on %s in %.2fs%s",
            len(runtime.tenants) - len(failed),
            record["api"],
            took,
            f"; not serving: {', '.join(failed)}" if failed else "",
        )
        try:
            await stop.wait()
        finally:
            logger.info("host shutting down (grace %.1fs)", settings.shutdown_grace_s)
            server.should_exit = True
            warm.cancel()
            await asyncio.gather(warm, return_exceptions=True)
            await runtime.stop_all(settings.shutdown_grace_s)
            await task
            files.runtime.unlink(missing_ok=True)
            logger.info("host stopped")

    try:
        asyncio.run(main())
    finally:
        runtime.close_all()
