"""Where a node keeps its inspection files: splits, drift audit, heatmaps.

The ``qdspace train`` / ``inspect`` commands write these files, the node's API reads
them and the demo's inspection chapter writes them the same way; so their names live
here, in the runtime layer all three may import, rather than in one of them.
"""

from __future__ import annotations

from pathlib import Path

INSPECTION_DIR = "inspection"
EXPLANATIONS_DIR = "explanations"
DRIFT_FILE = "drift.json"


def split_path(directory: Path, member: str) -> Path:
    """Where the split manifest of a member's cells is written."""
    return directory / INSPECTION_DIR / f"split-{member}.json"


def drift_path(directory: Path) -> Path:
    """The drift audit a running line keeps up to date (``inspect run``)."""
    return directory / INSPECTION_DIR / DRIFT_FILE


def explanations_root(directory: Path) -> Path:
    """Where ``qdspace inspect explain`` writes its folders (one per model version)."""
    return directory / INSPECTION_DIR / EXPLANATIONS_DIR
