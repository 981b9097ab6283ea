"""Regenerate the committed gRPC/protobuf stubs from ``protocols/*/*.proto``.

``protocols/v1`` is the peer wire (messages and gRPC services); ``protocols/sparkplug``
holds the Sparkplug B payload the MQTT connector reads (messages only: no gRPC stubs,
so the connector never imports grpc). Run ``python -m qdspace.protocols.generate`` from
the repository root; ``--out DIR`` writes into another tree (the drift test uses that
to compare).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocols" / "v1"
#: each folder of protos, and whether it defines gRPC services
FOLDERS = {"v1": True, "sparkplug": False}


def generate(out: Path = ROOT) -> list[Path]:
    """Compile every proto into ``out/protocols/<folder>`` and return the written files."""
    written: list[Path] = []
    for folder, services in FOLDERS.items():
        written += _generate(out, folder, services)
    return written


def _generate(out: Path, folder: str, services: bool) -> list[Path]:
    from grpc_tools import protoc  # dev dependency, imported only when regenerating

    protos = sorted((ROOT / "protocols" / folder).glob("*.proto"))
    (out / "protocols" / folder).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *([f"--grpc_python_out={out}"] if services else []),
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted((out / "protocols" / folder).glob("*_pb2*.py*"))
    for path in written:
        # protoc names modules after the proto path (``protocols.v1``); the project
        # imports them under its namespace (``qdspace.protocols.v1``).
        text = path.read_text(encoding="utf-8")
        text = text.replace(
            f"from protocols.{folder} import", f"from qdspace.protocols.{folder} import"
        )
        text = text.replace(f"'protocols.{folder}.", f"'qdspace.protocols.{folder}.")
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
