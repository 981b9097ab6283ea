"""The regulator credential as a FastAPI dependency: 401 without one, 403 if it fails.

The token format (issue and check) lives in ``node.identity.credential``, free of the
web framework, so the regulator's side can issue tokens without loading FastAPI; the
names are re-exported here for the node's API and the tests that import them from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from qdspace.node import faults
from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import Trust
from qdspace.node.identity.credential import (
    CLOCK_SKEW_S,
    DEFAULT_TTL_S,
    MAX_TTL_S,
    REGULATOR_ROLE,
    CredentialError,
    RegulatorPrincipal,
    check_credential,
    issue_credential,
)
from qdspace.node.identity.revocation import RevocationList

__all__ = [
    "CLOCK_SKEW_S",
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "REGULATOR_ROLE",
    "CredentialError",
    "RegulatorPrincipal",
    "check_credential",
    "issue_credential",
    "regulator_dependency",
]

_bearer = HTTPBearer(auto_error=False)


def regulator_dependency(
    ca_cert: Trust, revocations: RevocationList, audience: str
) -> Callable[..., RegulatorPrincipal]:
    """A FastAPI dependency: 401 without a credential, 403 with one that does not hold."""

    def require_regulator(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> RegulatorPrincipal:
        if creds is None:
            raise HTTPException(
                401, "regulator credential required (Authorization: Bearer <token>)"
            )
        try:
            return check_credential(
                creds.credentials, ca_cert=ca_cert, revocations=revocations, audience=audience
            )
        except IdentityError as exc:
            raise HTTPException(faults.http_status(exc), str(exc)) from None

    return require_regulator
