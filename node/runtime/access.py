"""Which datasets a member may see and ask for, over either binding (setting ``dsp_access``).

``dsp_access`` maps a dataset id (or ``*``, every dataset without its own entry) to an
ODRL policy in JSON-LD, any form the node reads (a Catena-X access policy: ``access``
permitted under ``BusinessPartnerNumber``, ``Membership`` and ``FrameworkAgreement``
constraints). The catalog lists only the datasets whose policy the caller satisfies, over
DSP and over gRPC alike; asking for another one (its dataset entry, a negotiation) is
refused: 403
`BpnNotAttested` when the policy needed a business partner number the authority attested
none for, 403 `FrameworkNotAttested` when it needed a framework agreement and the
authority attests none for the caller, 404 otherwise (a dataset a member may not see
does not exist for it). No entry: the dataset is visible to every member its role
admits, as before. The caller's facts come from the authority's signed member directory
(`attested_bpn`, `attested_frameworks`), see `policies.odrl.access`.

Why one check for both bindings: the policies came with the DSP binding (hence the
setting's name), and for a while only it applied them, so a member refused a dataset
over DSP (no attested BPNL, no framework agreement) saw it in the gRPC catalog and
negotiated for it there. A dataset's access policy is the provider's, whatever the
wire: the contract runtime holds this check (`ContractBase.access`) and every catalog
read and every negotiation asks it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qdspace.connector.contract_errors import UnknownContractError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.policies.errors import BpnNotAttested, FrameworkNotAttested, PolicyDenied
from qdspace.policies.odrl.access import CallerFacts, check_access
from qdspace.policies.odrl.codec import parse_jsonld_policy
from qdspace.policies.odrl.model import OdrlPolicy
from qdspace.policies.odrl.vocab import PolicyKind

EVERY_DATASET = "*"


def parse_access(setting: Mapping[str, Any]) -> dict[str, OdrlPolicy]:
    """The ``dsp_access`` setting read (a `PolicyError` names the dataset and the path)."""
    out = {}
    for dataset, document in setting.items():
        try:
            out[dataset] = parse_jsonld_policy(document, default_kind=PolicyKind.SET)
        except ValueError as exc:
            raise ValueError(f"dsp_access[{dataset!r}]: {exc}") from None
    return out


def _nobody(member_id: str) -> str | None:
    return None


def _unlisted(member_id: str) -> frozenset[str] | None:
    return None


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DatasetAccess:
    """The access policies and where the caller's facts come from."""

    policies: Mapping[str, OdrlPolicy] = field(default_factory=dict)
    attested_bpn: Callable[[str], str | None] = _nobody
    attested_frameworks: Callable[[str], frozenset[str] | None] = _unlisted
    clock: Callable[[], datetime] = _now

    def facts(self, peer: MemberIdentity) -> CallerFacts:
        member = peer.member_id
        frameworks = self.attested_frameworks(member)
        return CallerFacts(member, self.attested_bpn(member), frameworks=frameworks)

    def check(self, dataset_id: str, peer: MemberIdentity) -> None:
        """Refuse `peer` a dataset its access policy does not grant it (see the module)."""
        policy = self.policies.get(dataset_id) or self.policies.get(EVERY_DATASET)
        if policy is None:
            return
        what = f"dataset {dataset_id[:128]}"
        try:
            check_access(policy, self.facts(peer), self.clock(), what)
        except (BpnNotAttested, FrameworkNotAttested):
            raise
        except PolicyDenied:
            raise UnknownContractError(f"no dataset {dataset_id[:128]} here") from None

    def visible(self, dataset_id: str, peer: MemberIdentity) -> bool:
        try:
            self.check(dataset_id, peer)
        except (PolicyDenied, UnknownContractError):
            return False
        return True
