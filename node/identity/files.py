"""Reading the node's identity files, with errors that say which file and what it is.

(Writing them goes through `qdspace.util.files.write_atomic`: keys with ``mode=0o600``.)
"""

from __future__ import annotations

from pathlib import Path


def read_file(path: Path, what: str) -> bytes:
    """Read a file or raise an IdentityError naming it and what it should have been."""
    from qdspace.node.errors import IdentityError

    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise IdentityError(f"cannot read {what} {path}: {exc.strerror}") from None
