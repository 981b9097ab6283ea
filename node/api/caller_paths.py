"""Where a caller may name files on the node's machine (images to train on, a federated
job's data file).

A node's operator owns its machine: it names the files wherever it keeps them, as
absolute paths. A managed host's tenant owns nothing on the host's machine but its own
folder: the paths its staff name must resolve (symbolic links followed) inside
``TENANT_DIR/files``, where the host's operator puts a tenant's image sets; anything
else is refused before it is opened, saying where files must be.

Why: the routes read any absolute path, and a labels file's error quotes its first line,
so a tenant's staff named ``<host>/host.token`` as a labels file and read the host's
operator token (then suspended and purged other tenants with it); ``host.key`` gave the
master key that opens every tenant's secrets; a split manifest could overwrite another
tenant's files. `NodeContext.caller_files` says which kind of node this is (None: a
node of its own; a folder: a hosted tenant's).
"""

from __future__ import annotations

from pathlib import Path

from qdspace.node.errors import OutsideTenantFiles

#: a hosted tenant's folder for the files its staff may name (under its directory)
TENANT_FILES = "files"


def caller_path(text: str, root: Path | None, what: str) -> Path:
    """The path a caller named for `what`; on a hosted tenant (`root` given), resolved and
    refused (`OutsideTenantFiles`) unless it lies inside `root`."""
    path = Path(text)
    if root is None:
        return path
    base = root.resolve()
    resolved = (base / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(base):
        raise OutsideTenantFiles(
            f"{what}: {text[:200]!r} is not in this tenant's files folder ({base}); a hosted "
            "member names files the host's operator put there"
        )
    return resolved
