"""The genealogy graph: which batches a batch was made from.

A customer may ask the producer about a batch it bought; the producer answers one
hop (the batch and its direct parents) so that each member decides what it reveals
of its own supply chain. Walking further means asking the next producer.

What is answered is what the trace walk reads (`connector.trace_data.walk_genealogy`):
withdrawn records are not read. A withdrawn batch is no batch here, a withdrawn link
is no parent, and a parent whose batch row was withdrawn while its link stands is
named with producer ``"unknown"``, as one never recorded is. Before, the hop served
all three, so a customer read links the producer had taken back.

Who may ask: the batch's customer. The QDM names a customer by its *member name*
only, and a name passes to another member once its holder leaves (the authority frees
it): a newcomer under a freed name would read its predecessor's supply chain. The one
place that ties a name to a member id here is the agreements this node gave (their
parties are member ids, ``<name>-<12 hex digits>``). So with the caller's member id
given (``customer_id``), the purchase must be the caller's as far as those agreements
tell (`bought_by`):

1. the countersigned agreements given to members under the caller's name whose scope
   names the batch's order (a finite list of orders that holds it; "any order" names
   none): the earliest agreed says who placed the order, the member holding the name
   then (an order id is placed once, and a successor only gets the name, and an
   agreement of its own, after its predecessor left). Terminated ones count: they still
   say whose order it was. Answered only to that member;
2. otherwise, if an agreement here names another member under the caller's name, the
   name has changed hands and nothing ties the batch to the caller: refused, as a batch
   sold to somebody else is (a member asks about a batch of its own under an agreement
   that names its order);
3. otherwise no agreement tells the name's holders apart (the caller is the only
   member of that name this node has dealt with, or none was): the name decides, as
   before.

Where no member of a name ever held an agreement here (3), a successor under that name
is not told apart from its predecessor: the QDM holds nothing that could.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, or_
from sqlmodel import Session, col, select

from qdspace.connector.agreement import agreement_from_bytes
from qdspace.connector.contract_store.agreements import agreement_table
from qdspace.connector.errors import ConnectorError
from qdspace.connector.negotiation import Role
from qdspace.connector.qdm import Batch, GenealogyEdge
from qdspace.policies.evaluate import scope_orders

#: the hex digits of a member id after its name (``node.member_ids.DIGEST_HEX``; the
#: connector does not import the node)
_MEMBER_DIGEST_HEX = 12
_HEX = frozenset("0123456789abcdef")


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
    engine: Engine,
    batch_id: str,
    *,
    customer: str | None = None,
    customer_id: str | None = None,
) -> tuple[BatchInfo, list[BatchInfo]]:
    """The live batch and its live direct parents; with ``customer`` set, only if that
    member bought it, and with ``customer_id`` (the caller's member id, whose name
    ``customer`` is) also, only if this node's agreements leave the purchase to that
    member (`bought_by`, the module docstring).

    A parent recorded in the genealogy but not (or no longer) in the batch table is
    returned with producer ``"unknown"`` rather than hidden.
    """
    if not batch_id or len(batch_id) > 64:
        raise GenealogyError("batch id must be 1 to 64 characters")
    if customer_id is not None and customer is None:
        raise GenealogyError("a caller's member id needs its name (customer)")
    with Session(engine) as session:
        live = col(Batch.withdrawn_at).is_(None)
        batch = session.exec(select(Batch).where(Batch.batch_id == batch_id, live)).first()
        if batch is None:
            raise UnknownBatch(f"no batch {batch_id!r} here")
        if customer is not None and (
            batch.customer != customer
            or (
                customer_id is not None
                and not bought_by(session.connection(), customer, customer_id, batch.order_id)
            )
        ):
            raise NotYourBatch(f"batch {batch_id} was not sold to {customer}")
        parent_ids = list(
            session.exec(
                select(GenealogyEdge.parent_batch_id)
                .where(
                    GenealogyEdge.child_batch_id == batch_id,
                    col(GenealogyEdge.withdrawn_at).is_(None),
                )
                .order_by(col(GenealogyEdge.parent_batch_id))
            )
        )
        known = {
            b.batch_id: _info(b)
            for b in session.exec(select(Batch).where(col(Batch.batch_id).in_(parent_ids), live))
        }
        info = _info(batch)
    parents = [known.get(p, BatchInfo(p, "", "", "unknown", 0.0)) for p in parent_ids]
    return info, parents


def bought_by(connection: Connection, name: str, member_id: str, order_id: str | None) -> bool:
    """Whether this node's agreements leave a batch sold to `name` under `order_id` to
    member `member_id` (rules 1 to 3 of the module docstring)."""
    if order_id:
        buyer = _first_named(connection, name, order_id)
        if buyer is not None:
            return buyer == member_id
    return not (_members_named(connection, name) - {member_id})


def _first_named(connection: Connection, name: str, order_id: str) -> str | None:
    """The member under `name` given the earliest countersigned agreement here whose
    scope names `order_id` (only those whose one order it is, or that name no single
    order, are parsed), or None."""
    table = agreement_table
    rows = connection.execute(
        select(table.c.consumer_id, table.c.scope_order, table.c.canonical)
        .where(
            table.c.role == Role.PROVIDER.value,
            table.c.consumer_id.startswith(f"{name}-", autoescape=True),
            table.c.consumer_signature.is_not(None),
            or_(table.c.scope_order == order_id, table.c.scope_order.is_(None)),
        )
        .order_by(table.c.agreed_at, table.c.agreement_id)
    )
    for consumer_id, scope, raw in rows:
        if not _is_member_of(consumer_id, name):
            continue
        if scope == order_id or order_id in (
            scope_orders(agreement_from_bytes(bytes(raw)).policy) or ()
        ):
            return str(consumer_id)
    return None


def _members_named(connection: Connection, name: str) -> set[str]:
    """The member ids under `name` that any agreement held here names as a party."""
    table = agreement_table
    found: set[str] = set()
    for party in (table.c.consumer_id, table.c.provider_id):
        query = select(party).where(party.startswith(f"{name}-", autoescape=True)).distinct()
        found.update(str(m) for (m,) in connection.execute(query) if _is_member_of(m, name))
    return found


def _is_member_of(member_id: str, name: str) -> bool:
    """Whether `member_id` is a member id (``<name>-<12 hex digits>``) under `name`."""
    owner, _, digest = member_id.rpartition("-")
    return owner == name and len(digest) == _MEMBER_DIGEST_HEX and set(digest) <= _HEX
