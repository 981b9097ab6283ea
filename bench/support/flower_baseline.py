"""The Flower baseline of ``bench/federation.py``: Flower 1.27 exchanging the same payload.

Flower (``flwr==1.27.0``) is installed into its own virtual environment
(``$TMPDIR/qdspace-bench-flower-venv``) from the machine's package index and run as its
gRPC deployment: ``flower-superlink``, three ``flower-supernode`` processes and a
ServerApp submitted with ``flwr run``, exchanging the same float32 payload (FedAvg over
the Message API); the round time is measured inside the ServerApp.

``tls=True`` runs it as a deployment would and as our nodes always run: the SuperLink's
Fleet and Control APIs serve TLS with a certificate of a throwaway CA made here (ECDSA
P-256, as our members' certificates), the SuperNodes and the ``flwr`` CLI trust that CA.
``tls=False`` is ``--insecure`` everywhere (what the benchmark measured before, which
flatters Flower: no encryption on 3 x 47 MB each way). Flower authenticates the server
only; our nodes use mutual TLS, so the comparison still flatters Flower slightly.

The ServerApp and ClientApp import only Flower and numpy: they run in Flower's venv,
which has nothing else (an earlier version imported PyNaCl there and never ran).
If Flower cannot be installed or run, the result says exactly why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MEMBERS = 3

FLOWER_VERSION = "1.27.0"
FLOWER_VENV = Path(tempfile.gettempdir()) / "qdspace-bench-flower-venv"

_FLOWER_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "qdbench"
version = "1.0.0"
description = "qdspace benchmark: one FedAvg round of a fixed-size float32 update"
license = "Apache-2.0"
dependencies = ["flwr==1.27.0", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "qdspace"

[tool.flwr.app.components]
serverapp = "qdbench_server:app"
clientapp = "qdbench_client:app"

[tool.flwr.app.config]
values = 1000
rounds = 3
members = 3
out = "flower-rounds.json"
"""

# The ServerApp does FedAvg by hand over Flower's Message API so the round time is
# exactly: send the global ArrayRecord to every SuperNode, each ClientApp adds a
# fixed change, receive the replies, average (the same work as our plain round).
_FLOWER_SERVER = """\
import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n, rounds, members = int(cfg["values"]), int(cfg["rounds"]), int(cfg["members"])
    deadline = time.monotonic() + 120
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < members and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
    nodes = nodes[:members]
    global_model = np.zeros(n, np.float32)
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        messages = [
            Message(
                content=RecordDict(
                    {"arrays": ArrayRecord([global_model]), "config": ConfigRecord({"round": rnd})}
                ),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            for node in nodes
        ]
        replies = [m for m in grid.send_and_receive(messages) if m.has_content()]
        if len(replies) != len(nodes):
            raise RuntimeError(f"round {rnd}: {len(replies)} of {len(nodes)} replies")
        arrays = [m.content["arrays"].to_numpy_ndarrays()[0] for m in replies]
        global_model = np.mean(arrays, axis=0, dtype=np.float32)
        times.append(time.perf_counter() - t0)
    with open(str(cfg["out"]), "w") as fh:
        json.dump({"round_s": times, "nodes": len(nodes), "values": n}, fh)
"""

_FLOWER_CLIENT = """\
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    params = msg.content["arrays"].to_numpy_ndarrays()[0]
    trained = params + np.float32(1e-5)
    content = RecordDict(
        {"arrays": ArrayRecord([trained]), "metrics": MetricRecord({"num-examples": 100})}
    )
    return Message(content=content, reply_to=msg)
"""


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("qdbench-ca", ca_key, "qdbench-ca", ca_key, True)
    cert = build("127.0.0.1", key, "qdbench-ca", ca_key, False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _flower_install(offline: bool = False) -> str | None:
    """Create the separate venv with flwr==1.27.0; None when ready, else why not.

    ``offline`` (``--quick``, CI): pip may use only what the machine already has (its
    wheel cache, a configured find-links folder), never the index, and gets 2 minutes."""
    flwr_bin = FLOWER_VENV / "bin" / "flower-superlink"
    python = FLOWER_VENV / "bin" / "python"
    if flwr_bin.exists():
        check = subprocess.run(
            [str(python), "-c", "import flwr; print(flwr.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.stdout.strip() == FLOWER_VERSION:
            return None
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True, timeout=120
            )
        pip = [str(python), "-m", "pip", "install", "-q", f"flwr=={FLOWER_VERSION}"]
        if offline:
            pip.insert(-1, "--no-index")
        done = subprocess.run(pip, capture_output=True, text=True, timeout=120 if offline else 900)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create the Flower venv {FLOWER_VENV}: {exc}"
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if "ERROR" in ln]
        how = " offline (--quick never reaches the index)" if offline else ""
        return f"pip could not install flwr=={FLOWER_VERSION}{how}: {(lines or ['no output'])[-1]}"
    return None


def flower(
    n: int, rounds: int, timeout_s: float = 600.0, offline: bool = False, *, tls: bool = True
) -> tuple[list[float] | None, str]:
    """Flower's deployment (SuperLink + 3 SuperNodes, ``flwr run``) exchanging ``n`` float32,
    over TLS (``tls``) or ``--insecure``.

    Returns the per-round times measured inside Flower's ServerApp (send the global
    ArrayRecord to every SuperNode, receive the trained ones, average), or None and
    the exact reason it could not be measured.
    """
    problem = _flower_install(offline)
    if problem is not None:
        return None, problem
    bindir = FLOWER_VENV / "bin"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-flower-") as tmp:
        work = Path(tmp)
        app = work / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(_FLOWER_PYPROJECT)
        (app / "qdbench_server.py").write_text(_FLOWER_SERVER)
        (app / "qdbench_client.py").write_text(_FLOWER_CLIENT)
        out = work / "rounds.json"
        serverappio, fleet, control = _free_port(), _free_port(), _free_port()
        home = work / "flwr-home"
        home.mkdir()
        ca, cert, key = _tls_files(work)
        link_tls = (
            ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
            if tls
            else ["--insecure"]
        )
        node_tls = ["--root-certificates", str(ca)] if tls else ["--insecure"]
        cli_tls = f'root-certificates = "{ca}"' if tls else "insecure = true"
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{control}"\n{cli_tls}\n'
        )
        env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"

        def spawn(name: str, args: list[str]) -> Path:
            log = work / f"{name}.log"
            with log.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        args,
                        cwd=work,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            return log

        try:
            link_log = spawn(
                "superlink",
                [
                    str(bindir / "flower-superlink"),
                    *link_tls,
                    "--serverappio-api-address",
                    f"127.0.0.1:{serverappio}",
                    "--fleet-api-address",
                    f"127.0.0.1:{fleet}",
                    "--control-api-address",
                    f"127.0.0.1:{control}",
                    "--health-server-address",
                    f"127.0.0.1:{_free_port()}",
                    "--storage-dir",
                    str(work / "storage"),
                ],
            )
            for i in range(MEMBERS):
                spawn(
                    f"supernode{i}",
                    [
                        str(bindir / "flower-supernode"),
                        *node_tls,
                        "--superlink",
                        f"127.0.0.1:{fleet}",
                        "--clientappio-api-address",
                        f"127.0.0.1:{_free_port()}",
                        "--health-server-address",
                        f"127.0.0.1:{_free_port()}",
                        "--node-config",
                        f"partition-id={i}",
                    ],
                )
            time.sleep(3.0)
            if any(p.poll() is not None for p in procs):
                return None, f"a Flower process exited at start: superlink log: {_tail(link_log)}"
            overrides = f"values={n} rounds={rounds} members={MEMBERS} out='{out}'"
            run = subprocess.run(
                [str(bindir / "flwr"), "run", str(app), "bench", "--stream", "-c", overrides],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            (work / "flwr-run.log").write_text(run.stdout + run.stderr)
            if not out.exists():
                return None, (
                    f"flwr run ended (exit {run.returncode}) without round times: "
                    f"{_tail(work / 'flwr-run.log')} / superlink: {_tail(link_log)}"
                )
            data = json.loads(out.read_text())
            return [float(t) for t in data["round_s"]], (
                f"flwr {FLOWER_VERSION}: SuperLink + {data['nodes']} SuperNodes "
                f"({'TLS, server-authenticated' if tls else '--insecure, no TLS'}), "
                "ServerApp via flwr run, Message API, FedAvg of one float32 array"
            )
        except subprocess.TimeoutExpired:
            return None, f"flwr run did not finish in {timeout_s:.0f}s: {_tail(link_log)}"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
