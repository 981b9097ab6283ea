"""A provider's own terms for its standard assets (the node setting ``offers``).

`connector.offers.standard_assets` is what every trading node publishes: inspection
results, process data along the genealogy, the operator log, the live stream and the
traceability answers, each for the quality purposes, the fields a supplier commonly
shares, deletion within 180 days with a signed receipt. A supplier decides what leaves
its hands: it may share fewer fields (a process parameter that is know-how), for fewer
purposes, keep the data with its customers for longer or shorter, ask no receipt, offer
it only to members that signed a framework agreement (the space authority attests who
did; checked at the negotiation and at every release), or not offer an asset at all. An
`OfferChoice` per asset says so; `chosen_assets` builds the catalog from them, and
`answer_request` then agrees only within the chosen offer (the release gate releases
only what an agreement grants), so a choice holds on every binding.

Choices only narrow what the standard offer says, except the retention, which is the
provider's to set (1 to `MAX_RETENTION_DAYS` days): a field the standard offer leaves
out (which frame, how fast the model was) stays out, and purposes stay among the
asset's. A choice that does not hold is refused with the setting's path and what is
allowed (`check_choices`), before the node starts. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from qdspace.connector.assets import Asset
from qdspace.connector.offers import offer_terms, standard_assets
from qdspace.policies.model import FRAMEWORK_NAME, make_offer

MAX_RETENTION_DAYS = 3650


@dataclass(frozen=True)
class OfferChoice:
    """One asset's terms as the provider chose them (None: the standard offer's)."""

    offered: bool = True
    purposes: frozenset[str] | None = None
    fields: frozenset[str] | None = None
    retention_days: int | None = None
    receipt: bool | None = None
    # a framework agreement the consumer must have signed (the authority attests it)
    framework: str | None = None


def _names(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def check_choices(choices: Mapping[str, OfferChoice], standard: Mapping[str, Asset]) -> None:
    """Refuse a choice the standard offers do not allow (`ValueError` naming its path)."""
    for asset_id, choice in choices.items():
        where = f"offers[{asset_id!r}]"
        asset = standard.get(asset_id)
        if asset is None:
            raise ValueError(
                f"{where}: no such asset; this node offers {_names(frozenset(standard))}"
            )
        terms = offer_terms(asset.offer)
        if choice.purposes is not None:
            extra = choice.purposes - terms.purposes
            if not choice.purposes or extra:
                raise ValueError(
                    f"{where}.purposes: {_names(extra) or 'none given'}: choose among "
                    f"{_names(terms.purposes)}"
                )
        if choice.fields is not None:
            offered = terms.fields if terms.fields is not None else asset.fields
            extra = choice.fields - offered
            if not choice.fields or extra:
                raise ValueError(
                    f"{where}.fields: {_names(extra) or 'none given'} not among the fields "
                    f"{asset_id} is offered with ({_names(offered)})"
                )
        if choice.framework is not None and not FRAMEWORK_NAME.fullmatch(choice.framework):
            raise ValueError(
                f"{where}.framework: {choice.framework[:80]!r} is not a framework agreement's "
                "name (1-64 letters, digits and '._:-', as in DataExchangeGovernance:1.0)"
            )
        days = choice.retention_days
        if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
            raise ValueError(
                f"{where}.retention_days: {days}; a retention is 1 to {MAX_RETENTION_DAYS} days"
            )


def chosen_assets(provider_id: str, choices: Mapping[str, OfferChoice]) -> list[Asset]:
    """The standard assets with the provider's choices applied (`check_choices` first);
    an asset not offered is left out of the catalog."""
    standard = {a.asset_id: a for a in standard_assets(provider_id)}
    check_choices(choices, standard)
    out = []
    for asset in standard.values():
        choice = choices.get(asset.asset_id)
        if choice is None:
            out.append(asset)
            continue
        if not choice.offered:
            continue
        terms = offer_terms(asset.offer)
        terms = replace(
            terms,
            purposes=choice.purposes if choice.purposes is not None else terms.purposes,
            fields=choice.fields if choice.fields is not None else terms.fields,
            retention_days=(
                choice.retention_days if choice.retention_days is not None else terms.retention_days
            ),
            receipt=choice.receipt if choice.receipt is not None else terms.receipt,
            framework=choice.framework,
        )
        offer = make_offer(asset.offer.uid, provider_id, asset.asset_id, terms)
        out.append(replace(asset, offer=offer))
    return out
