"""A node that does not inspect installs and runs without Ray, onnxruntime or the dev chain.

The core install is what every member of a data space runs: contracts, data exchange,
the ledger client, federated rounds. Ray Serve (~300 MB) and onnxruntime come with the
``inspect`` extra, the embedded EVM chain (eth-tester, py-evm) with ``devchain``. Two
halves keep that true:

- the wheel's metadata: none of them is a requirement outside its extra, every core
  requirement is imported somewhere, and the wheel holds the ``qdspace`` package only;
- a real node process (``node init`` + ``node start``) with those modules made
  unimportable by a ``sitecustomize`` on its path: it must serve its operator API, and
  asking it to inspect (or to run the dev chain) must end in one line naming the extra
  to install, not in a traceback.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from qdspace.util.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "node",
    "connector",
    "policies",
    "ledger",
    "federation",
    "inference",
    "protocols",
    "util",
)
pytestmark = pytest.mark.integration

BLOCKED = ("ray", "onnxruntime", "eth_tester")
# a sitecustomize module: every import of a blocked name fails like a missing package, and
# the attempt is written down (so a caught ImportError cannot hide that a module tried)
BLOCKER = f"""
import os, sys

BLOCKED = {BLOCKED!r}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(os.environ["QDSPACE_BLOCK_LOG"], "a") as log:
                log.write(f"{{os.getpid()}} {{name}} {{' '.join(sys.argv)}}\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Blocked())
"""

# distribution name -> the module its users import
IMPORT_NAMES = {
    "grpcio": "grpc",
    "grpcio-health-checking": "grpc_health",
    "protobuf": "google.protobuf",
    "pynacl": "nacl",
    "pillow": "PIL",
    "pydantic-settings": "pydantic_settings",
    "pyjwt": "jwt",
}


# -- the wheel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from a copy of the sources (an in-tree build would leave build/
    behind and could pick stale files up from it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("qdspace", *PACKAGES):
        shutil.copytree(ROOT / folder, src / folder, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("qdspace-*.whl")
    return zipfile.ZipFile(built)


def _requirements(wheel: zipfile.ZipFile) -> list[str]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


def _dist(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def test_core_requirements_carry_no_ray_onnxruntime_or_dev_chain(wheel: zipfile.ZipFile) -> None:
    requirements = _requirements(wheel)
    core = [r for r in requirements if "extra ==" not in r]
    assert core, requirements
    heavy = {"ray", "onnxruntime", "onnxruntime-gpu", "eth-tester", "py-evm", "torch"}
    assert not [r for r in core if _dist(r) in heavy], core
    assert "matplotlib" not in {_dist(r) for r in requirements}

    def extra(name: str) -> set[str]:
        return {_dist(r) for r in requirements if re.search(rf"extra == ['\"]{name}['\"]", r)}

    assert {"ray", "onnxruntime"} <= extra("inspect")
    assert "eth-tester" in extra("devchain")
    assert "torch" in extra("train")
    assert "elpv-dataset" in extra("elpv")


def test_the_wheel_holds_only_the_qdspace_package(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/")[0] for n in wheel.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"qdspace"}, sorted(tops)
    assert len(dist_info) == 1, sorted(tops)
    names = set(wheel.namelist())
    for package in PACKAGES:
        assert f"qdspace/{package}/__init__.py" in names, package
    # what a node reads at run time besides code: migrations, the anchor contract, protos
    for data in (
        "qdspace/connector/migrations/env.py",
        "qdspace/connector/migrations/script.py.mako",
        "qdspace/connector/migrations/versions/0001_qdm.py",
        "qdspace/ledger/contracts/Anchor.json",
        "qdspace/protocols/v1/catalog.proto",
        "qdspace/node/py.typed",
    ):
        assert data in names, data


def _imported_modules() -> Iterator[str]:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    yield from (a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    yield node.module


def test_every_core_requirement_is_used(wheel: zipfile.ZipFile) -> None:
    """A core requirement nobody imports only makes every install bigger (matplotlib was
    one). psycopg is the exception: SQLAlchemy loads it from the database URL."""
    imported = set(_imported_modules())
    storage = (ROOT / "connector" / "storage.py").read_text(encoding="utf-8")
    unused = []
    for requirement in _requirements(wheel):
        if "extra ==" in requirement:
            continue
        dist = _dist(requirement)
        if dist == "psycopg":
            if "postgresql+psycopg" not in storage:
                unused.append(dist)
            continue
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        if not any(m == module or m.startswith(module + ".") for m in imported):
            unused.append(dist)
    assert not unused, f"core requirements imported nowhere: {unused}"


# -- a node process without the extras ---------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "QDSPACE_BLOCK_LOG": str(tmp_path / "blocked.log"),
    }


def _qdspace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


def test_a_node_without_the_extras_starts_serves_and_refuses_to_inspect_clearly(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    blocked_log = Path(env["QDSPACE_BLOCK_LOG"])
    probe = subprocess.run(
        [sys.executable, "-c", "import ray"], capture_output=True, text=True, env=env
    )
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, probe.stderr
    blocked_log.unlink()

    authority, directory = tmp_path / "authority", tmp_path / "node"
    done = _qdspace(env, "authority", "init", "--dir", str(authority))
    assert done.returncode == 0, done.stderr
    done = _qdspace(
        env, "node", "init", "--dir", str(directory), "--name", "plainnode", "--role",
        "supplier", "--authority", str(authority), "--grpc-port", str(free_port()),
        "--api-port", str(free_port()), "--regulator-port", str(free_port()),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    api_port = int(re.search(r'"api_port":\s*(\d+)', (directory / "node.json").read_text())[1])
    token = (directory / "operator.token").read_text().strip()

    log = (tmp_path / "node.log").open("wb")
    node = subprocess.Popen(
        [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(directory)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
        verify=ssl.create_default_context(cafile=directory / "ca.crt"),
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert node.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-3000:]
            time.sleep(0.3)
        # the operator API answers, the inspection routes included (they only read files)
        models = api.get("/v1/inspection/models")
        assert models.status_code == 200, models.text
        assert models.json() == []
        assert (
            api.get("/v1/inspection/models").headers["content-type"].startswith("application/json")
        )

        # asking this install to inspect: one line that names the extra
        for args in (
            ("inspect", "run", "--dir", str(directory), "--seconds", "1", "--no-live"),
            ("inspect", "run", "--dir", str(directory), "--seconds", "1", "--local"),
        ):
            line = _one_error_line(_qdspace(env, *args))
            assert "qdspace[inspect]" in line, line
        line = _one_error_line(
            _qdspace(env, "ledger", "chain", "--state-dir", str(tmp_path / "chain"))
        )
        assert "qdspace[devchain]" in line, line
        assert node.poll() is None, "the node must keep serving"
    finally:
        api.close()
        node.terminate()
        try:
            node.wait(30)
        finally:
            log.close()
    # the node itself never tried any of them (a caught ImportError would hide it)
    attempts = blocked_log.read_text().splitlines() if blocked_log.exists() else []
    assert not [a for a in attempts if " node start " in a], attempts
