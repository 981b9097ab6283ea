"""The DSP catalog's datasets are built once per catalog generation, in a worker thread
(`node.dsp.catalog`): the answers are the ones the uncached catalog gave, a dataset
the access policy or the role hides from a member stays hidden from it whoever filled
the cache, a change of the caller's facts shows at once, and an asset offered or
replaced (a new catalog generation) is seen."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector import dsp_codec as codec
from qdspace.node.runtime.access import DatasetAccess, parse_access
from qdspace.node.runtime.contracts import ContractRuntime

from .conftest import ENDPOINT, Caller, Calls, Provider, provider

BPN = "BPNL00000003CRHK"
OTHER_BPN = "BPNL000000000001"
ACCESS = {
    "inspections": {
        "@context": [
            "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
            "https://w3id.org/catenax/policy/context.jsonld",
        ],
        "@type": "Set",
        "@id": "urn:access:bpn",
        "permission": [
            {
                "action": "access",
                "constraint": [
                    {"leftOperand": "BusinessPartnerNumber", "operator": "eq", "rightOperand": BPN}
                ],
            }
        ],
    }
}


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Provider]:
    """Cellex showing ``inspections`` only to the member attested `BPN`."""
    made = provider(tmp_path, lambda bpn: DatasetAccess(parse_access(ACCESS), bpn.get))
    yield made
    made.close()


def uncached(runtime: ContractRuntime, caller: Caller) -> dict[str, Any]:
    """The catalog as the route built it before the cache, on every request."""
    peer = caller.member.identity
    datasets = []
    for entry in runtime.catalog(peer.role):
        if runtime.access.visible(entry.asset_id, peer):
            asset = runtime.asset_for(entry.asset_id, peer.role)
            datasets.append(codec.dataset(asset.asset_id, [asset.offer], asset.title, ENDPOINT))
    return codec.catalog(runtime.me.member_id, datasets, ENDPOINT)


def watched(monkeypatch: pytest.MonkeyPatch, calls: Calls) -> Calls:
    calls.watch(monkeypatch, codec, "dataset")  # (each compacts an offer with pyld)
    return calls


def built(calls: Calls) -> int:
    return calls.counts.get("dataset", 0)


def same_as_uncached(runtime: ContractRuntime, caller: Caller) -> list[str]:
    """Check `caller`'s catalog and each dataset of it against the uncached answer; the
    ids it lists."""
    expected = uncached(runtime, caller)
    answer = caller.catalog()
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == expected
    for item in expected["dataset"]:
        one = caller.get(f"/catalog/datasets/{item['@id']}")
        assert one.status_code == 200, one.text
        assert one.json() == codec.dataset_response(item)
    return [item["@id"] for item in expected["dataset"]]


def test_catalog_answers_are_the_uncached_ones_built_once_off_the_loop(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched(monkeypatch, calls)
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    solaris = cellex.client(cellex.authority.member("solaris", "supplier", b"s"))
    shown = same_as_uncached(cellex.runtime, sunarc)
    assert len(shown) == 5 and built(calls) == 5 + 5  # the answers' and the test's own
    assert same_as_uncached(cellex.runtime, solaris) == ["traceability"]  # its role's view
    assert built(calls) == 10 + 1  # the test's own again: the app's are all kept
    for _ in range(3):
        assert sunarc.catalog().json() == uncached(cellex.runtime, sunarc)
        assert sunarc.get("/catalog/datasets/inspections").status_code == 200
    assert built(calls) == 11 + 3 * 5  # the test's own only
    assert calls.on_loop == []  # the app built its datasets in worker threads


def test_a_dataset_hidden_from_a_member_stays_hidden(
    guarded: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched(monkeypatch, calls)
    sunarc_member = guarded.authority.member("sunarc", "oem", b"o")
    lumen_member = guarded.authority.member("lumen", "oem", b"l")
    sunarc, lumen = guarded.client(sunarc_member), guarded.client(lumen_member)
    guarded.bpn[sunarc_member.identity.member_id] = BPN
    guarded.bpn[lumen_member.identity.member_id] = OTHER_BPN
    assert "inspections" in same_as_uncached(guarded.runtime, sunarc)  # fills the cache
    before = built(calls)
    catalog = lumen.catalog()
    assert catalog.status_code == 200
    assert "inspections" not in [d["@id"] for d in catalog.json()["dataset"]]
    assert catalog.json() == uncached(guarded.runtime, lumen)
    hidden = lumen.get("/catalog/datasets/inspections")
    assert hidden.status_code == 404, hidden.text
    assert hidden.json()["@type"] == "CatalogError"
    assert hidden.json()["reason"] == ["no dataset inspections here"]
    # the test's own: lumen's view came from what sunarc's request built
    assert built(calls) == before + len(catalog.json()["dataset"])
    # the facts change, the catalog does not: the next answers follow the facts
    guarded.bpn[sunarc_member.identity.member_id] = OTHER_BPN
    guarded.bpn[lumen_member.identity.member_id] = BPN
    assert "inspections" not in [d["@id"] for d in sunarc.catalog().json()["dataset"]]
    assert sunarc.get("/catalog/datasets/inspections").status_code == 404
    assert "inspections" in same_as_uncached(guarded.runtime, lumen)
    assert calls.on_loop == []


def test_an_offered_or_replaced_asset_is_seen(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched(monkeypatch, calls)
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    runtime = cellex.runtime
    first = same_as_uncached(runtime, sunarc)
    generation = runtime.catalog_generation
    model = runtime.assets["inspections"]
    offer = dataclasses.replace(model.offer, uid="offer:job-7", target="job-7")
    job = dataclasses.replace(model, asset_id="job-7", title="a job", offer=offer)
    runtime.offer_asset(job)
    renamed = dataclasses.replace(runtime.assets["operator-log"], title="operator actions")
    runtime.offer_asset(renamed)
    assert runtime.catalog_generation == generation + 2
    now = same_as_uncached(runtime, sunarc)
    assert sorted(now) == sorted([*first, "job-7"])
    assert sunarc.get("/catalog/datasets/operator-log").json()["title"] == "operator actions"
    assert sunarc.get("/catalog/datasets/job-7").json()["title"] == "a job"
    before = built(calls)
    assert sunarc.catalog().json() == uncached(runtime, sunarc)
    assert built(calls) == before + len(now)  # the test's own: the new generation is kept
    assert calls.on_loop == []
