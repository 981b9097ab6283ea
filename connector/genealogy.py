"""The genealogy graph: which batches a batch was made from.

A customer may ask the producer about a batch it bought; the producer answers one
hop (the batch and its direct parents) so that each member decides what it reveals
of its own supply chain. Walking further means asking the next producer.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from qdspace.connector.errors import ConnectorError
from qdspace.connector.qdm import Batch, GenealogyEdge


class GenealogyError(ConnectorError):
    """A genealogy question that cannot be answered."""


class UnknownBatch(GenealogyError, LookupError):
    """No batch with that id here."""


class NotYourBatch(GenealogyError, PermissionError):
    """The caller did not buy that batch."""


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    material: str
    kind: str
    producer: str
    quantity: float


def _info(batch: Batch) -> BatchInfo:
    return BatchInfo(batch.batch_id, batch.material, batch.kind, batch.producer, batch.quantity)


def upstream(
    engine: Engine, batch_id: str, *, customer: str | None = None
) -> tuple[BatchInfo, list[BatchInfo]]:
    """The batch and its direct parents; with ``customer`` set, only if that member bought it.

    A parent recorded in the genealogy but not (yet) in the batch table is returned
    with producer ``"unknown"`` rather than hidden.
    """
    if not batch_id or len(batch_id) > 64:
        raise GenealogyError("batch id must be 1 to 64 characters")
    with Session(engine) as session:
        batch = session.exec(select(Batch).where(Batch.batch_id == batch_id)).first()
        if batch is None:
            raise UnknownBatch(f"no batch {batch_id!r} here")
        if customer is not None and batch.customer != customer:
            raise NotYourBatch(f"batch {batch_id} was not sold to {customer}")
        parent_ids = list(
            session.exec(
                select(GenealogyEdge.parent_batch_id)
                .where(GenealogyEdge.child_batch_id == batch_id)
                .order_by(col(GenealogyEdge.parent_batch_id))
            )
        )
        known = {
            b.batch_id: _info(b)
            for b in session.exec(select(Batch).where(col(Batch.batch_id).in_(parent_ids)))
        }
        info = _info(batch)
    parents = [known.get(p, BatchInfo(p, "", "", "unknown", 0.0)) for p in parent_ids]
    return info, parents
