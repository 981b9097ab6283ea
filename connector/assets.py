"""Assets: the named views a provider publishes, and the catalog members see.

An asset says what a consumer can get (its kind, the QDM tables it reads, the fields
it exposes, which of them are pseudonymised) and on which terms (its offer). It is
checked when it is made: its offer must be an Offer for it, and must not grant fields
it does not expose, nor pseudonymise fields it does not have. What a member sees of
it in the catalog (`CatalogEntry`) leaves the table names out, and only the members
of its audience see it at all.

Why separate: an asset is pure description, shared by the negotiation (what an offer
is for), the release gate (what may leave) and the readers (which table to page);
none of them needs the others to know what an asset is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from qdspace.connector.contract_errors import ViewError
from qdspace.policies.model import FIELD_ALLOW_OPERATORS, LeftOperand, Policy, PolicyType

DEFAULT_PSEUDONYMIZED = frozenset({"operator_id"})


class AssetKind(StrEnum):
    INSPECTIONS_OF_ORDER = "inspections_of_order"
    PROCESS_ALONG_GENEALOGY = "process_along_genealogy"
    LIVE_INSPECTION_STREAM = "live_inspection_stream"
    OPERATOR_LOG_OF_ORDER = "operator_log_of_order"
    #: Root-cause findings about bought batches, answered by ``Trace/Investigate``:
    #: never transferred, no row of the QDM leaves under it.
    TRACEABILITY = "traceability"
    #: A federated-learning job: no table behind it, only model updates under contract.
    FEDERATED_JOB = "federated_job"


@dataclass(frozen=True)
class Asset:
    """A view a provider publishes in its catalog, with the offer it is available under.

    `audience` lists the member roles that may see it in the catalog (empty:
    every member). `order_key` is the field that carries a row's order id.
    `consumers` names the members that may negotiate it (empty: any member the
    audience admits); a federated job's are its members. Only a federated job
    has no tables: nothing of it is ever read from the QDM.
    """

    asset_id: str
    title: str
    kind: AssetKind
    tables: tuple[str, ...]
    fields: frozenset[str]
    offer: Policy
    pseudonymized: frozenset[str] = DEFAULT_PSEUDONYMIZED
    order_key: str = "order_id"
    audience: frozenset[str] = frozenset()
    description: str = ""
    consumers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        needs_tables = self.kind is not AssetKind.FEDERATED_JOB
        if not self.asset_id or (needs_tables and not self.tables) or not self.fields:
            raise ViewError(f"asset {self.asset_id!r} needs an id, tables and fields")
        if self.offer.type is not PolicyType.OFFER or self.offer.target != self.asset_id:
            raise ViewError(
                f"asset {self.asset_id}: its offer {self.offer.uid} must be an Offer "
                f"targeting it (targets {self.offer.target})"
            )
        unknown = self.pseudonymized - self.fields
        if unknown:
            raise ViewError(
                f"asset {self.asset_id}: pseudonymises unknown fields {sorted(unknown)}"
            )
        for permission in self.offer.permissions:
            for constraint in permission.constraints:
                right = constraint.right_operand
                if (
                    constraint.left_operand is LeftOperand.FIELDS
                    and constraint.operator in FIELD_ALLOW_OPERATORS
                    and isinstance(right, frozenset)
                    and right - self.fields
                ):
                    raise ViewError(
                        f"asset {self.asset_id}: its offer grants fields it does not expose: "
                        f"{sorted(right - self.fields)}"
                    )

    def visible_to(self, role: str) -> bool:
        """Whether a member with this role sees the asset in the catalog."""
        return not self.audience or role in self.audience

    def negotiable_by(self, name: str) -> bool:
        """Whether the member called `name` may negotiate the asset."""
        return not self.consumers or name in self.consumers

    @property
    def is_stream(self) -> bool:
        return self.kind is AssetKind.LIVE_INSPECTION_STREAM


@dataclass(frozen=True)
class CatalogEntry:
    """What a member sees of an asset in a provider's catalog (no table names)."""

    provider_id: str
    asset_id: str
    title: str
    kind: AssetKind
    fields: frozenset[str]
    pseudonymized: frozenset[str]
    offer: Policy
    description: str = ""


def catalog_entry(asset: Asset, provider_id: str) -> CatalogEntry:
    return CatalogEntry(
        provider_id=provider_id,
        asset_id=asset.asset_id,
        title=asset.title,
        kind=asset.kind,
        fields=asset.fields,
        pseudonymized=asset.pseudonymized,
        offer=asset.offer,
        description=asset.description,
    )


def catalog(assets: Iterable[Asset], provider_id: str, role: str) -> list[CatalogEntry]:
    """The entries a member with `role` may see, sorted by asset id."""
    visible = (a for a in assets if a.visible_to(role))
    return [catalog_entry(a, provider_id) for a in sorted(visible, key=lambda a: a.asset_id)]
