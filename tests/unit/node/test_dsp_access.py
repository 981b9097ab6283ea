"""`dsp_access`: which datasets a DSP caller sees, on the BPNL the directory attests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from qdspace.connector.contract_errors import UnknownContractError
from qdspace.node.config import NodeSettings
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.access import DatasetAccess, parse_access
from qdspace.policies.errors import BpnNotAttested

BPN = "BPNL00000003CRHK"
CX = [
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]


def _policy(left: str, right: object) -> dict[str, object]:
    return {
        "@context": CX,
        "@type": "Set",
        "@id": f"urn:access:{left}",
        "permission": [
            {
                "action": "access",
                "constraint": [{"leftOperand": left, "operator": "eq", "rightOperand": right}],
            }
        ],
    }


def _member(member_id: str) -> MemberIdentity:
    far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    return MemberIdentity(member_id, member_id, "oem", b"\0" * 32, 1, far, "0" * 64)


def test_the_attested_bpnl_decides_not_the_caller() -> None:
    policies = parse_access(
        {"inspections": _policy("BusinessPartnerNumber", BPN), "*": _policy("Membership", "active")}
    )
    access = DatasetAccess(policies, {"m-attested": BPN, "m-other": "BPNL000000000001"}.get)
    assert access.visible("inspections", _member("m-attested"))
    assert access.visible("operator-log", _member("m-unknown"))  # "*": membership is enough
    with pytest.raises(BpnNotAttested, match="attested none for m-unknown"):
        access.check("inspections", _member("m-unknown"))
    with pytest.raises(UnknownContractError):  # another number: not found, not a hint
        access.check("inspections", _member("m-other"))
    assert not access.visible("inspections", _member("m-unknown"))
    assert DatasetAccess().visible("inspections", _member("anyone"))  # no setting: as before


def test_a_bad_access_policy_refuses_the_settings(tmp_path: Path) -> None:
    base = {"directory": tmp_path, "name": "n", "role": "oem", "member_id": "m"}
    NodeSettings(**base, dsp_access={"x": _policy("Membership", "active")})
    with pytest.raises(ValueError, match=r"dsp_access\['x'\]"):
        NodeSettings(**base, dsp_access={"x": _policy("NoSuchOperand", "v")})
    with pytest.raises(ValueError, match="not known to this node"):
        NodeSettings(
            **base, dsp_access={"x": {**_policy("Membership", "active"), "@context": "https://e/"}}
        )
