"""Public request/response models of the operator API (never the storage tables)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    Strict,
    StringConstraints,
)

from qdspace.node.api.bodies import Body, iso_only
from qdspace.util.instants import in_utc

#: ids and names a caller sends: printable, bounded (no NUL or control characters, which
#: some databases refuse outright)
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ID_MAX = 256
TEXT_MAX = 2000
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=r"^[^\x00]*$")]
IdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]


#: a date-time with a zone, as a caller sends it (query or body), held in UTC; an instant
#: whose UTC value leaves years 1-9999 is refused as a 422 naming the field (`in_utc`
#: raises a ValueError), instead of overflowing where the database is asked (a 500).
#: Not strict in a strict body (`bodies.Body`): JSON writes a date-time as a string.
UtcDatetime = Annotated[AwareDatetime, Strict(False), AfterValidator(in_utc)]
#: `UtcDatetime` in a JSON body or a query: an ISO 8601 string only (`bodies.iso_only`);
#: lax parsing also read ``"valid_until": 5`` (or ``"5"``, or ``?since=5``) as 5 seconds
#: after 1970
BodyDatetime = Annotated[UtcDatetime, BeforeValidator(iso_only)]


class Health(BaseModel):
    status: str
    name: str
    member_id: str
    role: str
    schema_version: str


class Liveness(BaseModel):
    status: str
    loop_turn_ms: float


class ProbeCheck(BaseModel):
    ok: bool
    detail: str


class ProbeResult(BaseModel):
    """``/readyz`` and ``/startupz``: ``ok`` or ``failing``, and every check's result."""

    status: str
    checks: dict[str, ProbeCheck]


class NodeInfo(BaseModel):
    name: str
    member_id: str
    role: str
    space: str
    grpc_address: str
    certificate_fingerprint: str
    certificate_not_after: str
    verify_key_hex: str
    database: str
    peers: dict[str, str]
    #: the framework agreements the authority's directory attests this member signed
    #: (None: the node follows no directory, so no register speaks for it)
    attested_frameworks: list[str] | None = None


class RowErrorPublic(BaseModel):
    source: str
    line: int
    field: str
    reason: str


class IngestResult(BaseModel):
    kind: str
    source: str
    accepted: int
    duplicates: int
    #: the first 10,000 problems found (`problems` counts them all)
    rejected: list[RowErrorPublic]
    #: rows whose record was stored with other content: new versions (corrections)
    corrected: int = 0
    #: every problem found, listed in `rejected` or not
    problems: int = 0
    #: lines refused (a line may have several problems)
    refused_lines: int = 0


class IngestRows(Body):
    rows: list[dict[str, Any]] = Field(description="QDM rows of one kind; line = index + 1")
    source: Id = "api"


class HelloPublic(BaseModel):
    peer: str
    peer_member_id: str
    peer_role: str
    seen_as: str
    seen_as_role: str
    round_trip_ms: float


class BatchPublic(BaseModel):
    batch_id: str
    material: str
    kind: str
    producer: str
    quantity: float


class UpstreamPublic(BaseModel):
    batch: BatchPublic
    parents: list[BatchPublic]


class DictionaryEntry(BaseModel):
    """One quality data element of the dictionary; ``domain`` is its value domain (a unit
    with conversions and grades, or a list of allowed values), tagged by ``type``."""

    id: str
    name: str
    definition: str
    aliases: list[str]
    domain: dict[str, Any]
