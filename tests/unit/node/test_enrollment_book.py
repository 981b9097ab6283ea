"""The authority's book of enrollment codes (``enrollments.json``) is pruned when written:
a code that expired unredeemed goes `KEEP_EXPIRED` past its expiry (the book kept every
code ever made); a redeemed code's row stays (which code admitted which member), and so
does every rule the book serves: an unknown code is refused, a waiting code's name held.
The book stays atomically written (no partial file, no temporary file left behind)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from qdspace.node.identity import enrollment as book
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.enrollment import KEEP_EXPIRED
from qdspace.node.identity.errors import EnrollmentCodeRefused, EnrollmentCodeUsed, NameTaken

SPACE = "book-space"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", space=SPACE)


def _request(name: str) -> bytes:
    return build_request(
        space=SPACE,
        name=name,
        role="supplier",
        tls_key=new_tls_key(),
        signing_key=SigningKey.generate(),
        hostnames=(),
    )


def _age(authority: Authority, ages: dict[str, dt.timedelta]) -> None:
    """Move the named codes' expiry back by ``ages`` (as time passing would)."""
    path = authority.files.enrollments
    rows = json.loads(path.read_text())
    for row in rows:
        if row["code_id"] in ages:
            row["expires_at"] = (NOW - ages[row["code_id"]]).isoformat()
    path.write_text(json.dumps(rows))


def _ids(authority: Authority) -> set[str]:
    return set(book.load_book(authority.files.enrollments))


def test_codes_that_expired_unredeemed_are_pruned_when_the_book_is_written(
    authority: Authority,
) -> None:
    old = authority.create_enrollment(name="gone", role="supplier")
    recent = authority.create_enrollment(name="late", role="supplier")
    used = authority.create_enrollment(name="cellex", role="supplier")
    authority.sign_request(_request("cellex"), code=str(used))
    day = dt.timedelta(days=1)
    _age(
        authority,
        {old.code_id: KEEP_EXPIRED + day, recent.code_id: KEEP_EXPIRED - day},
    )
    _age(authority, {used.code_id: KEEP_EXPIRED * 10})  # redeemed long ago
    fresh = authority.create_enrollment(name="polycell", role="supplier")  # writes the book
    assert _ids(authority) == {recent.code_id, used.code_id, fresh.code_id}
    # what the pruned code meets now: unknown, refused as a guessed one is
    with pytest.raises(EnrollmentCodeRefused, match="unknown code"):
        authority.preview_enrollment(str(old))
    # the redeemed row still refuses the code's reuse, by name
    with pytest.raises(EnrollmentCodeUsed, match="already used"):
        authority.sign_request(_request("cellex"), code=str(used))
    assert not list(authority.directory.glob("*.tmp*"))  # written atomically as before


def test_redeeming_a_code_prunes_too(authority: Authority) -> None:
    old = authority.create_enrollment(name="gone", role="supplier")
    code = authority.create_enrollment(name="cellex", role="supplier")
    _age(authority, {old.code_id: KEEP_EXPIRED * 2})
    authority.sign_request(_request("cellex"), code=str(code))
    assert _ids(authority) == {code.code_id}


def test_a_waiting_code_keeps_its_name_held(authority: Authority) -> None:
    """Pruning touches only expired codes: a waiting code's name stays held from other
    members' hostnames (`enrollment.pending_names`)."""
    authority.create_enrollment(name="bosch", role="supplier")
    expired = authority.create_enrollment(name="zf", role="supplier")
    _age(authority, {expired.code_id: KEEP_EXPIRED * 2})
    code = authority.create_enrollment(name="evil", role="supplier")
    request = build_request(
        space=SPACE,
        name="evil",
        role="supplier",
        tls_key=new_tls_key(),
        signing_key=SigningKey.generate(),
        hostnames=("bosch",),
    )
    with pytest.raises(NameTaken, match="'bosch' is the name an enrollment code waiting"):
        authority.sign_request(request, code=str(code))


def test_prune_is_pure_and_keeps_what_it_must() -> None:
    def row(code_id: str, expired_for: dt.timedelta, used: bool) -> book.Enrollment:
        return book.Enrollment(
            code_id=code_id,
            secret_sha256="0" * 64,
            name=code_id,
            role="supplier",
            created_at=(NOW - expired_for - dt.timedelta(days=1)).isoformat(),
            expires_at=(NOW - expired_for).isoformat(),
            used_at=NOW.isoformat() if used else None,
            used_by="m" if used else None,
        )

    second = dt.timedelta(seconds=1)
    codes = {
        "waiting": row("waiting", -dt.timedelta(hours=1), used=False),
        "just-kept": row("just-kept", KEEP_EXPIRED - second, used=False),
        "pruned": row("pruned", KEEP_EXPIRED + second, used=False),
        "redeemed": row("redeemed", KEEP_EXPIRED * 100, used=True),
    }
    kept = book.prune(codes, NOW)
    assert set(kept) == {"waiting", "just-kept", "redeemed"}
    assert set(codes) == {"waiting", "just-kept", "pruned", "redeemed"}  # input untouched
