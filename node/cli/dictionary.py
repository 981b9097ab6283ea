"""``qdspace dictionary check | export``: the node's data dictionary as documents.

``check FILE`` validates a dictionary file (a node's own, before it is named in
``node.json``) over the package's default and says what it adds and replaces;
``export`` writes the effective dictionary (the package's, or a node's with ``--dir``,
or with ``--file``) as a registry document (JSON) or a SAMM aspect model (Turtle).
Reads files only: no node needs to run.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qdspace.node.cli.errors import clean_errors

console = Console(highlight=False)

dictionary_app = typer.Typer(no_args_is_help=True, help="the data dictionary (ISO/IEC 11179)")


class ExportFormat(StrEnum):
    registry = "registry"
    samm = "samm"


def _extra(directory: Path | None, file: Path | None) -> Path | None:
    if directory is not None and file is not None:
        raise typer.BadParameter("give --dir or --file, not both")
    if directory is not None:
        from qdspace.node.config import NodeSettings

        return NodeSettings.load(directory).dictionary_path
    return file


@dictionary_app.command("check")
@clean_errors
def check(file: Annotated[Path, typer.Argument(help="a dictionary file (.json, .yaml)")]) -> None:
    """Validate FILE over the package's dictionary; list what it adds and replaces."""
    from qdspace.connector.dictionary_file import load_dictionary, read_document

    document = read_document(file)
    loaded = load_dictionary(file)
    base = load_dictionary().records
    added = [e.id for e in document.elements if e.id not in base]
    replaced = [e.id for e in document.elements if e.id in base]
    console.print(f"{file}: {document.dictionary} {document.version} is valid", soft_wrap=True)
    console.print(f"  adds {len(added)}: {', '.join(added) or '-'}", soft_wrap=True)
    console.print(f"  replaces {len(replaced)}: {', '.join(replaced) or '-'}", soft_wrap=True)
    console.print(f"  effective: {loaded.version}, {len(loaded.dictionary)} elements")


@dictionary_app.command("export")
@clean_errors
def export(
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="registry (JSON) or samm (Turtle)")
    ] = ExportFormat.registry,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="a node directory: its dictionary_file too")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="an extra dictionary file")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write here (default: stdout)")] = None,
    namespace: Annotated[
        str, typer.Option(help="SAMM namespace (urn:samm:ORG.DOMAIN)")
    ] = "urn:samm:io.qdspace.dictionary",
) -> None:
    """Write the effective dictionary as a registry document or a SAMM aspect model."""
    from qdspace.connector.dictionary_export import registry_document, samm_aspect
    from qdspace.connector.dictionary_file import load_dictionary

    loaded = load_dictionary(_extra(directory, file))
    if fmt is ExportFormat.samm:
        text = samm_aspect(loaded, namespace)
    else:
        text = json.dumps(registry_document(loaded), indent=1, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"{out}: {len(loaded.dictionary)} data elements ({loaded.version})")
