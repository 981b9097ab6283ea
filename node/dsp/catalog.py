"""The DSP catalog's datasets, compacted once per catalog generation, off the event loop.

Why a cache: a dataset's DSP form carries its offer compacted as JSON-LD (pyld), ~13 ms
an asset, and every catalog request built every dataset again, on the event loop that
also serves the node's gRPC calls: 65 ms for the five standard assets per ~100-byte
request, and the dataset route built the whole catalog to answer one entry. A dataset's
form depends only on its asset and this node's address, so it is built once (in a
worker thread) until the runtime's assets change (`ContractBase.catalog_generation`,
bumped on every asset offered or replaced; the gRPC catalog keys its replies the same).

What a member may see is NOT cached, it is asked on every request: its role admits an
asset or not (`Asset.visible_to`), and the access policies (`node.runtime.access`)
decide by the member's attested facts and the clock, which change without the catalog
changing. A whole catalog answer is kept per (generation, the ids this member may
see), so two members share an answer only when they see the same datasets; a member
is never shown a dataset by the cache that its view does not list.
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from qdspace.connector import dsp_codec as codec
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.access import DatasetAccess
from qdspace.node.runtime.contracts import ContractRuntime

#: catalog answers kept per generation: one per distinct view (roles x what the access
#: policies hide); a few in practice, cleared when full rather than grown
MAX_VIEWS = 64


def render(content: Any) -> bytes:
    """JSON as the routes answer it (Starlette's `JSONResponse`), kept as bytes."""
    return bytes(JSONResponse(content).body)


class DspCatalog:
    """The datasets of `runtime`'s catalog in their DSP form, for the member asking."""

    def __init__(self, runtime: ContractRuntime, access: DatasetAccess, endpoint: str) -> None:
        self.runtime = runtime
        self.access = access
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._generation = -1
        #: asset id -> its dataset (of `_generation`)
        self._datasets: dict[str, dict[str, Any]] = {}
        #: the ids a view shows -> its catalog answer (of `_generation`)
        self._catalogs: dict[tuple[str, ...], bytes] = {}

    def shown(self, peer: MemberIdentity) -> tuple[str, ...]:
        """The ids of the datasets `peer` may see now, in catalog order (never cached)."""
        entries = self.runtime.catalog(peer.role)
        return tuple(e.asset_id for e in entries if self.access.visible(e.asset_id, peer))

    def _keep(self, generation: int) -> bool:
        """Whether what was built at `generation` may be kept (under the lock): a newer
        generation drops everything older; an answer built at an older one is not kept."""
        if generation > self._generation:
            self._generation = generation
            self._datasets.clear()
            self._catalogs.clear()
        return generation == self._generation

    def _dataset(self, generation: int, asset_id: str) -> dict[str, Any] | None:
        """The dataset of `asset_id` (None: no such asset now). Blocking (pyld)."""
        with self._lock:
            found = self._datasets.get(asset_id) if generation == self._generation else None
        if found is not None:
            return found
        asset = self.runtime.assets.get(asset_id)
        if asset is None:
            return None
        built = codec.dataset(asset.asset_id, [asset.offer], asset.title, self.endpoint)
        with self._lock:
            if self._keep(generation):
                self._datasets[asset_id] = built
        return built

    def _catalog(self, generation: int, shown: tuple[str, ...]) -> bytes:
        """The catalog answer listing `shown`. Blocking (pyld, for datasets not built yet)."""
        items = [self._dataset(generation, i) for i in shown]
        datasets = [item for item in items if item is not None]
        body = render(codec.catalog(self.runtime.me.member_id, datasets, self.endpoint))
        with self._lock:
            if self._keep(generation):
                if len(self._catalogs) >= MAX_VIEWS:
                    self._catalogs.clear()
                self._catalogs[shown] = body
        return body

    async def catalog(self, peer: MemberIdentity) -> bytes:
        """The catalog answer for `peer`: what it may see, built in a worker if not kept."""
        generation = self.runtime.catalog_generation  # before the assets are read
        shown = self.shown(peer)
        with self._lock:
            body = self._catalogs.get(shown) if generation == self._generation else None
        if body is None:
            body = await run_in_threadpool(self._catalog, generation, shown)
        return body

    async def dataset(self, asset_id: str, peer: MemberIdentity) -> dict[str, Any]:
        """The one dataset `asset_id`, if `peer` may see it: the access policy's refusal
        (403 for a fact not attested, 404 otherwise), or 404 as if it did not exist."""
        generation = self.runtime.catalog_generation
        self.access.check(asset_id, peer)
        asset = self.runtime.assets.get(asset_id)
        found = None
        if asset is not None and asset.visible_to(peer.role):
            with self._lock:
                found = self._datasets.get(asset_id) if generation == self._generation else None
            if found is None:
                found = await run_in_threadpool(self._dataset, generation, asset_id)
        if found is None:
            raise UnknownContractError(f"no dataset {asset_id[:128]} here")
        return found
