"""Tenant names: the one check every entry point (CLI, host API, directory) goes through.

A tenant name becomes a folder under ``HOST/tenants/``, a member name in certificates and
a key in the host's registry, so it must not smuggle a path (``..``, ``/``, a leading
dot), differ from another only by case (``SiliWafer`` next to ``siliwafer`` on a
case-insensitive file system is the same folder) or hide a look-alike character. Hence
a strict alphabet: lowercase ASCII letters, digits and inner hyphens, 1-40 characters,
and names are compared case-folded against the tenants already there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from qdspace.node.host.errors import TenantExists, TenantNameRefused

MAX_NAME = 40
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def check_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else `TenantNameRefused` saying why."""
    shown = repr(name) if len(name) <= 60 else repr(name[:60] + "...")
    if not name:
        raise TenantNameRefused("a tenant name must not be empty")
    if len(name) > MAX_NAME:
        raise TenantNameRefused(f"tenant name {shown} is longer than {MAX_NAME} characters")
    if not name.isascii() or _NAME.fullmatch(name) is None:
        raise TenantNameRefused(
            f"tenant name {shown} is not allowed: use lowercase letters a-z, digits and "
            "inner hyphens only (no dots, slashes, spaces or capitals)"
        )
    return name


def check_new_name(name: str, existing: Iterable[str]) -> str:
    """A valid name that no tenant of ``existing`` has, compared case-insensitively."""
    folded = name.casefold()
    for other in existing:
        if other.casefold() == folded:
            raise TenantExists(f"tenant {other!r} already exists on this host")
    return check_name(name)
