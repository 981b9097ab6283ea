"""The committed stubs are exactly what the generator produces from the .proto files."""

from __future__ import annotations

from pathlib import Path

from qdspace.protocols.generate import ROOT, generate


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "no stubs generated"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `make protos` and commit the result"
        )
