"""What the authority attests of a member beyond its own entry: the framework agreements
it signed.

Catena-X datasets are commonly open only to members that signed a framework agreement
(``cx-policy:FrameworkAgreement`` = ``DataExchangeGovernance:1.0``, ``Pcf:1.0``, ...). A
provider cannot take a member's word for that, any more than for a business partner
number; in this space the authority is who knows it. The authority's operator records
each framework a member signed (``qdspace authority attest``, kept in its register), and
the authority's signed directory document carries them, member id by member id, under
``attested`` (``{"<member id>": {"frameworks": ["DataExchangeGovernance:1.0"]}}``). A
provider reads a caller's frameworks from the directory it holds, and its access policy
evaluates ``FrameworkAgreement`` on them (`policies.odrl.access`).

Why in the document and not in the member's entry: an entry is the member's own
statement, signed by it; an attestation is the authority's, and it changes when the
authority says so (a framework signed or withdrawn), not when the member republishes.
The document's CA signature covers it. A member's own entry cannot name frameworks (its
parser refuses unknown fields).

A framework is named as Catena-X names them, ``Name:version``: 1-64 characters of
letters, digits and ``._:-``, starting with a letter or digit; at most
``MAX_FRAMEWORKS`` a member. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from qdspace.node.identity.directory import MalformedDirectory
from qdspace.policies.model import FRAMEWORK_NAME

MAX_FRAMEWORKS = 32
#: the kind of attestation this version reads (a member's object may hold up to
#: ``MAX_KINDS`` kinds; a later version's are kept in the signed document, not read)
FRAMEWORKS = "frameworks"
MAX_KINDS = 8

#: member id -> the frameworks the authority attests for it (sorted, each once)
Attested = Mapping[str, tuple[str, ...]]


class MalformedAttestation(MalformedDirectory):
    """A framework name or an ``attested`` object that does not hold up (module)."""


def check_framework(name: Any, where: str = "framework") -> str:
    """``name`` if it is a framework's name (module), else `MalformedAttestation`."""
    if not isinstance(name, str) or not FRAMEWORK_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise MalformedAttestation(
            f"{where}: {shown} is not a framework agreement's name (1-64 letters, digits and "
            "'._:-', as in DataExchangeGovernance:1.0)"
        )
    return name


def frameworks_of(names: Iterable[str], where: str = "frameworks") -> tuple[str, ...]:
    """The frameworks, checked, each once and sorted (the one form they are signed in)."""
    checked = sorted({check_framework(n, where) for n in names})
    if len(checked) > MAX_FRAMEWORKS:
        raise MalformedAttestation(
            f"{where}: {len(checked)} frameworks; a member has at most {MAX_FRAMEWORKS}"
        )
    return tuple(checked)


def attested_json(attested: Attested) -> dict[str, Any]:
    """The document's ``attested`` object (members with nothing attested left out)."""
    return {m: {FRAMEWORKS: list(f)} for m, f in sorted(attested.items()) if f}


def parse_attested(data: Any, max_members: int) -> dict[str, tuple[str, ...]]:
    """A document's ``attested`` object read; `MalformedAttestation` says where it is wrong.
    A framework listed twice or out of order is refused, not mended: the document is
    signed as it came, and there is one form to sign. Other kinds of attestation (keys
    beside ``frameworks``, at most ``MAX_KINDS``) are a later version's: kept in the signed
    document, not read, as an entry's unknown endpoint kinds are."""
    if data is None:
        return {}
    if not isinstance(data, Mapping) or len(data) > max_members:
        raise MalformedAttestation(
            f"directory document: attested must be an object (<= {max_members} members)"
        )
    out: dict[str, tuple[str, ...]] = {}
    for member_id, item in data.items():
        where = f"directory document: attested[{str(member_id)[:80]!r}]"
        if not isinstance(member_id, str) or not 0 < len(member_id) <= 128:
            raise MalformedAttestation(f"{where}: not a member id")
        if not isinstance(item, Mapping) or not 0 < len(item) <= MAX_KINDS:
            raise MalformedAttestation(f"{where}: must be an object of 1-{MAX_KINDS} kinds")
        names = item.get(FRAMEWORKS)
        if names is None:
            continue
        if not isinstance(names, list) or not names:
            raise MalformedAttestation(f"{where}.{FRAMEWORKS}: must be a non-empty list")
        checked = frameworks_of(names, f"{where}.{FRAMEWORKS}")
        if list(checked) != names:
            raise MalformedAttestation(f"{where}.{FRAMEWORKS}: must be sorted, each once")
        out[member_id] = checked
    return out
