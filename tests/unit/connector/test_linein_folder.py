"""Pure parts of the export-folder connector: which files are ours, when one has settled."""

from __future__ import annotations

import pytest

from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder import Settling, kind_of

CONFIG = FolderConfig.model_validate(
    {
        "watch": "/x",
        "files": [
            {"pattern": "iv-*", "kind": "inspection"},
            {"pattern": "*", "kind": "measurement"},
        ],
    }
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("iv-2025.csv", "inspection"),
        ("furnace.JSONL", "measurement"),
        ("furnace.ndjson", "measurement"),
        ("iv-2025.csv.part", None),
        ("iv-2025.csv.tmp", None),
        (".iv-2025.csv", None),
        ("iv-2025.csv.errors.csv", None),
        ("iv-2025.xlsx", None),
        ("furnace.csv~", None),
    ],
)
def test_kind_of(name: str, kind: str | None) -> None:
    assert kind_of(CONFIG, name) == kind


def test_a_file_settles_only_when_unchanged_for_settle_s() -> None:
    s = Settling(1.0)
    assert not s.look("a.csv", (10, 1), now=0.0)  # first sight
    assert not s.look("a.csv", (10, 1), now=0.5)
    assert not s.look("a.csv", (20, 2), now=1.2)  # grew: starts again
    assert not s.look("a.csv", (20, 2), now=2.1)
    assert s.look("a.csv", (20, 2), now=2.2)
    zero = Settling(0.0)
    assert not zero.look("b.csv", (1, 1), now=0.0)  # never at the first look
    assert zero.look("b.csv", (1, 1), now=0.0)
