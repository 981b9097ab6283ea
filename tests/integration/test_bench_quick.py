"""Every benchmark runs in its ``--quick`` mode, so the scripts cannot rot unnoticed.

The full runs take minutes each and stay manual; ``--quick`` uses small sizes (seconds
per script) and still goes through every phase, prints ``name: value unit`` lines with
the baseline ratio, the cores and the load, and writes its figures as JSON. The figures
themselves are not judged here (two shared cores make them noise): only that they exist.
``make bench-quick`` runs this file alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))
pytestmark = [pytest.mark.integration, pytest.mark.slow]
FIGURE_LINE = re.compile(r"^[\w.\-]+: -?[\d,.]+(e[-+]?\d+)? ?\S*", re.MULTILINE)


def _numbers(doc: Any) -> list[float]:
    if isinstance(doc, bool):
        return []
    if isinstance(doc, int | float):
        return [float(doc)]
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in _numbers(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in _numbers(v)]
    return []


def test_every_bench_script_is_covered() -> None:
    assert len(BENCHES) >= 8, BENCHES
    for name in BENCHES:
        assert "--quick" in (ROOT / "bench" / f"{name}.py").read_text(), name


@pytest.mark.timeout(600)  # minutes on a loaded 2-core machine, seconds idle
@pytest.mark.parametrize("name", BENCHES)
def test_bench_quick_writes_figures(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    log = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, log
    figures = FIGURE_LINE.findall(done.stdout)
    assert len(figures) >= 3, log
    lowered = done.stdout.lower()
    assert "cores" in lowered or "cpus" in lowered, log
    assert "load" in lowered, log
    assert re.search(r"baseline|ratio|_vs_|over_| x\b", lowered), log
    doc = json.loads(out.read_text())
    numbers = _numbers(doc)
    assert len(numbers) >= 3 and any(x > 0 for x in numbers), doc
