"""Separate hosts on one machine: a network namespace per host, wired through a bridge.

Loopback tests cannot tell a node that binds the right address from one that binds
127.0.0.1, nor a member that reaches a peer through the address it was given from one
that quietly uses a shared file. Here every host (the authority, the chain, PostgreSQL,
each member) is its own ``ip netns`` namespace with one veth interface and its own IP on
a private /24; nothing but the network joins them (the filesystem is shared, as two
machines would share nothing but a directory the test reads to check results).

Layout, for a session suffix ``S`` (random, so concurrent runs and CI jobs never clash):

- ``qdn-PID-S-sw``: the switch, a namespace holding only the bridge ``br0``. Bridging
  in a namespace of its own keeps the root namespace's firewall out of the path (with
  ``br_netfilter`` loaded, a Docker host's ``FORWARD DROP`` would drop bridged frames);
- ``qdn-PID-S-HOST``: one per host, ``eth0`` at ``10.A.B.(10+i)``, a port of ``br0``;
- ``qdnSc`` in the root namespace at ``10.A.B.1``: the test's console, so the test
  process (the operators' terminal) reaches the hosts' operator APIs.

Links are created straight into their namespace (``ip link add ... netns``), so only the
console's name lives in the root namespace (15 characters at most). Deleting a namespace
takes its veth ends and their peers with it; :meth:`Lan.destroy` first kills every
process still in it (``ip netns pids``: PostgreSQL's backends, uvicorn's workers), and a
new :class:`Lan` first removes namespaces left by a run whose process (the PID in the
name) is gone.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "qdn"
NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-([a-z0-9]+)$")
T = TypeVar("T")


class NetnsError(RuntimeError):
    """A namespace, link or process of the harness could not be set up."""


def unavailable_reason() -> str | None:
    """Why this machine cannot build namespaces (None when it can)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (ip netns, veth, bridge); CI runs them as root"
    if shutil.which("ip") is None:
        return "network-namespace tests need iproute2's `ip` command"
    if shutil.which("setpriv") is None:
        return "network-namespace tests need util-linux's `setpriv` (PostgreSQL runs as postgres)"
    probe = f"{PREFIX}-{os.getpid()}-probe{secrets.token_hex(2)}-x"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here ({made.stderr.strip()}); no network namespaces"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def ip(*args: str, netns: str | None = None) -> str:
    """Run ``ip [-n NS] ARGS``; a failure raises with ip's own message."""
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """The namespaces that exist now (names only)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def kill_namespace(netns: str, timeout: float = 10.0) -> None:
    """SIGTERM every process in ``netns``, SIGKILL what stays, then delete it."""

    def pids() -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        found = pids()
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while found and time.monotonic() < deadline:
            time.sleep(0.1)
            found = pids()
        if not found:
            break
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True)


def remove_stale() -> list[str]:
    """Delete namespaces of this harness whose creating process is gone; their names."""
    gone = []
    for netns in namespaces():
        match = NAME.match(netns)
        if match and not _alive(int(match.group(1))):
            kill_namespace(netns, timeout=2.0)
            gone.append(netns)
    return gone


def _pick_subnet() -> str:
    """A random 10.A.B.0/24 that no address or route of the root namespace touches."""
    taken = ip("-4", "route", "show", "table", "all") + ip("-4", "addr", "show")
    for _ in range(200):
        net = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        if f"{net}." not in taken:
            return net
    raise NetnsError("no free 10.x.y.0/24 subnet found for the namespaces")


@dataclass
class Service:
    """A process running in a host's namespace, its output in a log file."""

    host: Host
    label: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL: the exit code (None when it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode


@dataclass
class Host:
    """One machine of the test: a namespace, its address, the processes it runs."""

    lan: Lan
    name: str
    netns: str
    ip: str
    services: list[Service] = field(default_factory=list)

    def argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        """``argv`` as run inside this host (as ``user``, when given, instead of root)."""
        cmd = ["ip", "netns", "exec", self.netns]
        if user is not None:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return cmd + list(argv)

    def spawn(
        self,
        label: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> Service:
        """Start a long-running process here; stdout and stderr go to ``LOGS/HOST-LABEL.log``."""
        log = self.lan.logs / f"{self.name}-{label}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.argv(argv, user),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else self.lan.env,
                cwd=cwd,
                start_new_session=True,
            )
        service = Service(self, label, process, log)
        self.services.append(service)
        return service

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: float = 120.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command here to its end; its output is appended to ``LOGS/HOST-run.log``."""
        done = subprocess.run(
            self.argv(argv, user),
            env=env if env is not None else self.lan.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        with (self.lan.logs / f"{self.name}-run.log").open("a") as log:
            log.write(f"$ {' '.join(argv)}\n[exit {done.returncode}]\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise NetnsError(
                f"on {self.name} ({self.ip}): `{' '.join(argv)}` exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        return done


class Lan:
    """A bridge and one namespace per host; :meth:`destroy` removes all of it, always."""

    def __init__(self, workdir: Path, hosts: Iterable[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.env = env
        self.suffix = secrets.token_hex(3)
        self.tag = f"{PREFIX}-{os.getpid()}-{self.suffix}"
        self.switch = f"{self.tag}-sw"
        self.console_link = f"{PREFIX}{self.suffix}c"  # the one root-namespace name: 10 chars
        self.subnet = ""
        self.console_ip = ""
        self.hosts: dict[str, Host] = {}
        self._names = list(hosts)
        for name in self._names:
            if not re.fullmatch(r"[a-z0-9]{1,12}", name):
                raise NetnsError(f"host name {name!r}: 1-12 lower-case letters or digits")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def create(self) -> None:
        """Build the switch, every host and the console; half-built parts are removed."""
        remove_stale()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.subnet = _pick_subnet()
        self.console_ip = f"{self.subnet}.1"
        try:
            ip("netns", "add", self.switch)
            ip("link", "add", "br0", "type", "bridge", netns=self.switch)
            ip("link", "set", "br0", "up", netns=self.switch)
            ip("link", "set", "lo", "up", netns=self.switch)
            for i, name in enumerate(self._names):
                self.hosts[name] = self._add_host(i, name)
            veth = f"link add {self.console_link} type veth peer name console netns {self.switch}"
            ip(*veth.split())
            ip("link", "set", self.console_link, "up")
            ip("addr", "add", f"{self.console_ip}/24", "dev", self.console_link)
            self._plug("console")
        except BaseException:
            self.destroy()
            raise

    def _plug(self, port: str) -> None:
        """Put the switch end of a veth onto the bridge."""
        ip("link", "set", port, "master", "br0", netns=self.switch)
        ip("link", "set", port, "up", netns=self.switch)

    def _add_host(self, i: int, name: str) -> Host:
        netns = f"{self.tag}-{name}"
        address = f"{self.subnet}.{10 + i}"
        ip("netns", "add", netns)
        port = f"p{i}"
        ip(*f"link add eth0 netns {netns} type veth peer name {port} netns {self.switch}".split())
        self._plug(port)
        ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        return Host(self, name, netns, address)

    def services(self) -> list[Service]:
        return [s for h in self.hosts.values() for s in h.services]

    def report(self, chars: int = 2500) -> list[tuple[str, str]]:
        """(title, log tail) of every process started, for a failure message."""
        out = [
            (f"{s.host.name}/{s.label} ({s.host.ip}) log {s.log}", s.tail(chars))
            for s in self.services()
        ]
        runs = sorted(self.logs.glob("*-run.log"))
        out += [(f"commands {p}", p.read_text(errors="replace")[-chars:]) for p in runs]
        return out

    def destroy(self) -> None:
        """Stop every process and delete every namespace (and so every link) of this LAN."""
        for service in reversed(self.services()):
            with contextlib.suppress(Exception):
                service.stop(timeout=10)
        for netns in [h.netns for h in self.hosts.values()] + [self.switch]:
            kill_namespace(netns)
        # a half-built create() may have left namespaces not yet in self.hosts
        for netns in namespaces():
            if netns.startswith(f"{self.tag}-"):
                kill_namespace(netns)
        with contextlib.suppress(NetnsError):
            ip("link", "delete", self.console_link)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    poll_s: float = 0.2,
    watch: Sequence[Service] = (),
) -> T:
    """Poll ``probe`` until it returns something truthy; fail early if a watched process dies."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # the last failure explains a timeout
            value, last = None, exc
        if value:
            waited = timeout - (deadline - time.monotonic())
            print(f"[{time.strftime('%H:%M:%S')}] {what}: after {waited:.1f}s")  # in the report
            return value
        for service in watch:
            if not service.running:
                raise NetnsError(
                    f"{service.host.name}/{service.label} exited ({service.process.returncode}) "
                    f"while waiting for {what}; {service.log}:\n{service.tail()}"
                )
        if time.monotonic() > deadline:
            raise NetnsError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(poll_s)
