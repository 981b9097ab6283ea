"""Certificate-bound signing keys of a job's members, for checking secure-aggregation adverts.

A member talks only to the coordinator, which relays everyone's key adverts. If the
member took the relayed keys on trust, a coordinator could put keys of its own in
the roster and open the shares sealed for that member. So each advert carries its
member's certificate: here it is checked against the data space's authority (issuer,
validity, the revocation list when one is at hand) and the member name inside it,
and only the Ed25519 key that certificate binds to the name may verify the advert.
The coordinator runs the same check on what it accepts (the certificate must be the
caller's own), so an honest coordinator never relays one that members would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from cryptography import x509
from nacl.signing import VerifyKey

from qdspace.federation.errors import RosterRefused
from qdspace.federation.secagg_messages import KeyAdvert
from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import MemberIdentity, Trust, identity_of, verify_issued_by
from qdspace.node.member_ids import member_id_for

#: ``serial -> True`` when the authority has revoked that certificate.
Revoked = Callable[[int], bool]

TRADING_ROLES = frozenset({"oem", "supplier", "host"})


class CertificateKeys:
    """Resolves the signing key of each advert from the certificate it carries."""

    def __init__(
        self,
        ca_cert: Trust,
        members: Collection[str],
        *,
        revoked: Revoked | None = None,
    ) -> None:
        self._ca = ca_cert
        self._members = frozenset(members)
        self._revoked = revoked

    def identity(self, advert: KeyAdvert) -> MemberIdentity:
        """The identity in ``advert``'s certificate, once checked to be ``advert.member``'s."""
        who = advert.member
        if not advert.certificate:
            raise RosterRefused(f"key advert of {who} carries no certificate")
        try:
            cert = x509.load_der_x509_certificate(advert.certificate)
            verify_issued_by(cert, self._ca)
            identity = identity_of(cert)
        except (ValueError, IdentityError) as exc:
            raise RosterRefused(
                f"certificate in the key advert of {who} is not valid: {exc}"
            ) from exc
        if identity.name != who:
            raise RosterRefused(f"key advert of {who} carries the certificate of {identity.name}")
        if identity.member_id != member_id_for(identity.name, identity.verify_key):
            raise RosterRefused(
                f"certificate of {who} binds member id {identity.member_id} to another key"
            )
        if who not in self._members or identity.role not in TRADING_ROLES:
            raise RosterRefused(f"{who} ({identity.role}) is not a member of this job")
        if self._revoked is not None:
            try:
                revoked = self._revoked(cert.serial_number)
            except IdentityError as exc:  # no list, or a stale one: fail closed
                raise RosterRefused(f"cannot check whether {who} is revoked: {exc}") from exc
            if revoked:
                raise RosterRefused(f"the certificate of {who} is revoked")
        return identity

    def key(self, advert: KeyAdvert) -> VerifyKey:
        return VerifyKey(self.identity(advert).verify_key)

    def keys(self, roster: Sequence[KeyAdvert]) -> Mapping[str, VerifyKey]:
        """Every roster member's certificate-bound key; ``RosterRefused`` names a bad one."""
        return {advert.member: self.key(advert) for advert in roster}
