"""CLI start-up: how long ``qdspace --help`` and a call against a running node take.

Issue 21: every command took seconds (``--help`` 2.2 s, ``contracts --dir D`` 5.3 s on
2 cores) because the CLI imported the node's server stack, while the REST call behind
``contracts`` answered in tens of milliseconds. Each sample here is a fresh interpreter,
as a user runs it, timed from spawn to exit:

- ``baseline.python``: ``python -c pass`` (the floor of any Python command);
- ``baseline.httpx_get``: ``python -c "import httpx; httpx.get(URL)"`` against the same
  node (the floor of a Python command that calls a node);
- ``cli.help``: ``python -m qdspace --help``;
- ``cli.contracts``: ``python -m qdspace contracts --dir D`` against a running node (its
  four REST calls and the tables it prints);
- ``rest.contracts``: the same four REST calls from this already-warm process.

``--before TREE`` also times the two CLI commands with another checkout first on the
path (e.g. the main branch), in the same run and under the same load.

    python bench/cli.py                      # 15 samples each
    python bench/cli.py --quick              # 1 sample each, after a warm-up (CI)
    python bench/cli.py --before /work/main --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdspace.node.localnet.network import LocalNetwork, MemberSpec  # noqa: E402

CONTRACT_CALLS = (
    "/v1/contracts/agreements",
    "/v1/contracts/transfers",
    "/v1/contracts/duties",
    "/v1/contracts/receipts",
)


def _spawn_ms(cmd: list[str], tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=env, cwd=tree, timeout=120)
    ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-1000:]!r}")
    return ms


def _samples(n: int, sample: Callable[[], float]) -> dict[str, float]:
    sample()  # warm the page cache; not counted
    values = [sample() for _ in range(n)]
    return {"p50_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}


def measure(runs: int, before: Path | None) -> dict[str, Any]:
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-cli-") as tmp:
        net = LocalNetwork(Path(tmp), [MemberSpec("sunarc", "oem")], chain=False)
        net.create()
        net.start()
        try:
            member = net["sunarc"]
            directory = str(member.directory)
            url = f"{member.api_url}/healthz"
            ca = str(member.ca_file)
            out: dict[str, Any] = {
                "baseline.python": _samples(runs, lambda: _spawn_ms([py, "-c", "pass"], ROOT)),
                "baseline.httpx_get": _samples(
                    runs,
                    lambda: _spawn_ms(
                        [py, "-c", f"import httpx; httpx.get({url!r}, verify={ca!r})"], ROOT
                    ),
                ),
            }
            trees = {"cli": ROOT} | ({"before": before} if before is not None else {})
            for label, tree in trees.items():
                out[f"{label}.help"] = _samples(
                    runs, lambda tree=tree: _spawn_ms([py, "-m", "qdspace", "--help"], tree)
                )
                out[f"{label}.contracts"] = _samples(
                    runs,
                    lambda tree=tree: _spawn_ms(
                        [py, "-m", "qdspace", "contracts", "--dir", directory], tree
                    ),
                )
            with member.client() as client:

                def rest() -> float:
                    started = time.perf_counter()
                    for path in CONTRACT_CALLS:
                        client.get(path).raise_for_status()
                    return (time.perf_counter() - started) * 1000

                out["rest.contracts"] = _samples(runs, rest)
        finally:
            net.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="samples per command")
    parser.add_argument("--quick", action="store_true", help="1 sample per command (CI)")
    parser.add_argument("--before", type=Path, help="another checkout to time the CLI of")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    figures = measure(runs, args.before.resolve() if args.before else None)
    results: dict[str, Any] = {
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "figures": figures,
    }
    for name, f in figures.items():
        print(f"{name}_p50: {f['p50_ms']:.0f} ms")
        print(f"{name}_min: {f['min_ms']:.0f} ms")
    base = figures["baseline.httpx_get"]["p50_ms"]
    results["contracts_over_httpx_get"] = figures["cli.contracts"]["p50_ms"] / base
    print(f"cli.contracts_over_httpx_get_p50: {results['contracts_over_httpx_get']:.2f} ratio")
    if "before.contracts" in figures:
        for cmd in ("help", "contracts"):
            ratio = figures[f"before.{cmd}"]["p50_ms"] / figures[f"cli.{cmd}"]["p50_ms"]
            results[f"{cmd}_speedup"] = ratio
            print(f"cli.{cmd}_speedup_over_before_p50: {ratio:.1f} ratio")
    print(f"cli.cpus: {results['cpus']} cores")
    print(f"cli.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
