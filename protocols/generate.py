"""Regenerate the committed gRPC/protobuf stubs from ``protocols/v1/*.proto``.

Run ``python -m qdspace.protocols.generate`` from the repository root; ``--out DIR``
writes into another tree (the drift test uses that to compare).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocols" / "v1"


def generate(out: Path = ROOT) -> list[Path]:
    """Compile every proto into ``out/protocols/v1`` and return the written files."""
    from grpc_tools import protoc  # dev dependency, imported only when regenerating

    protos = sorted(PROTO_DIR.glob("*.proto"))
    (out / "protocols" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted((out / "protocols" / "v1").glob("*_pb2*.py*"))
    for path in written:
        # protoc names modules after the proto path (``protocols.v1``); the project
        # imports them under its namespace (``qdspace.protocols.v1``).
        text = path.read_text(encoding="utf-8")
        text = text.replace("from protocols.v1 import", "from qdspace.protocols.v1 import")
        text = text.replace("'protocols.v1.", "'qdspace.protocols.v1.")
        path.write_text(text, encoding="utf-8")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out))


if __name__ == "__main__":
    main()
