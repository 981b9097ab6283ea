"""The suite without the `train` extra: tests that need PyTorch skip, they do not break
collection (pytest's importorskip turns an ImportError that is not a
ModuleNotFoundError into a deprecation warning, which `filterwarnings = error` raises)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
BLOCK_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; import pytest; "
    "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))"
)


def test_collection_without_pytorch_skips_instead_of_failing() -> None:
    targets = ["tests/unit/inference", "tests/integration/inference"]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "error" not in out.lower().split("collected")[-1], out[-3000:]
