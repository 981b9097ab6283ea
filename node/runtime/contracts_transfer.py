"""The provider's side of data transfers and live streams: decide, gate, release.

A transfer or a subscription is decided under a stored agreement this node gave the
peer, and every row passes a `ReleaseGate` built now: the agreement's policy, the
purpose and fields asked for, the orders still open and still the consumer's (read now,
not when the agreement was signed), and built again every `PULL_RECHECK_S` while a
pull is open. A pull resumes from the consumer's checkpoint and
saves each step of the transfer process as its batches leave; a re-read of a finished
transfer is sent again without changing anything. A live stream pages the released
inspections after a position (`STREAM_PAGE` rows at a time).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

from sqlalchemy import func, select

from qdspace.connector.assets import AssetKind
from qdspace.connector.contract_errors import (
    ContractDenied,
    TransferQuotaError,
    UnauthorizedSenderError,
    UnknownContractError,
)
from qdspace.connector.contract_store import StoredAgreement
from qdspace.connector.contract_store.transfer_records import TransferGone
from qdspace.connector.encoding import StreamRequest, live_page, stream_batches
from qdspace.connector.negotiation import Role
from qdspace.connector.paging import incremental_refusal, parse_position
from qdspace.connector.peer_time import check_sent_at
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.qdm import Inspection
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.transfer import (
    ResentRows,
    TransferProcess,
    TransferState,
    completion_id,
    open_transfer,
    reread,
)
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferRequest,
    TransferStart,
    TransferSuspension,
)
from qdspace.connector.transfer_wire import BatchRow, RowBatch
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import peer_name
from qdspace.node.rpc.contracts_transfer_serde import PullRequest
from qdspace.node.runtime.contracts_base import (
    QUOTA_WINDOW,
    ContractBase,
    GateRecheck,
    over_quota,
)
from qdspace.node.runtime.member_locks import locks_of
from qdspace.policies.evaluate import Request
from qdspace.policies.model import Action

logger = logging.getLogger("node.contracts")

STREAM_PAGE = 500
#: how often an open Pull builds its gate again (as a live stream does)
PULL_RECHECK_S = 1.0
#: the fewest rows a pulled batch holds (but the last), see `ProviderTransfers.pull`
MIN_BATCH_ROWS = 10
#: what a new transfer keeps here (its row, request and start), asked of the node's free
#: disk or a tenant's storage quota before it is opened (measured: 2.4 KB)
TRANSFER_ROW_BYTES = 4096
#: messages a transfer holds before a consumer's resumes and suspensions of it count
#: against its member's transfer quota (`charge_control`): its request and start, and a
#: dozen cuts and resumes
FREE_CONTROL_MESSAGES = 16


class ProviderTransfers(ContractBase):
    """The provider's transfer and stream moves (a mixin of `ContractRuntime`)."""

    def provider_agreement(self, agreement_id: str, peer: MemberIdentity) -> StoredAgreement:
        """An agreement this node gave to `peer`; anything else is a denial."""
        try:
            stored = self.store.agreement(agreement_id)
        except UnknownContractError:
            raise ContractDenied(
                f"no agreement {agreement_id} between {peer.name} and us"
            ) from None
        terms = stored.signed.agreement
        if stored.role is not Role.PROVIDER or terms.consumer_id != peer.member_id:
            raise ContractDenied(f"no agreement {agreement_id} between {peer.name} and us")
        if not stored.signed.complete:
            raise ContractDenied(f"agreement {agreement_id} is not countersigned")
        return stored

    def gate(
        self,
        stored: StoredAgreement,
        action: Action,
        purpose: str | None,
        order_id: str | None,
        fields: frozenset[str] | None,
    ) -> ReleaseGate:
        """The decision and row gate for one request under a stored agreement, now.

        Besides the agreement, the consumer must still be the customer of every order
        a row belongs to (read now, not when the agreement was signed), and hold any
        framework agreement the agreement asks for (the authority's word now)."""
        terms = stored.signed.agreement
        frameworks = self.frameworks_for(terms.policy, terms.consumer_id)
        asset = self.assets[terms.asset_id]
        closed = self.store.closed_orders(terms.agreement_id)
        request = Request(
            action=action,
            at=self.clock.now(),
            asset_fields=asset.fields,
            purpose=purpose,
            order_id=order_id,
            fields=fields,
            terminated=stored.terminated_at is not None,
            order_closed_at=closed.get(order_id) if order_id else None,
            frameworks=frameworks,
        )
        pseudonyms = Pseudonymizer(self.pseudonym_secret, terms.agreement_id)
        owned = self.customer_orders(peer_name(terms.consumer_id))
        return ReleaseGate(
            asset, terms.policy, request, pseudonyms, closed_orders=closed, owned_orders=owned
        )

    def open_transfer(self, peer: MemberIdentity, message: TransferRequest) -> TransferProcess:
        """Decide a transfer request; allowed: the process, STARTED at the genesis checkpoint.
        The quota's count and the save of the transfer it allows are one step per member
        (`node.runtime.member_locks`): requests sent side by side cannot all pass it."""
        with locks_of(self).hold(peer.member_id):
            process, new = self.decide_transfer(peer, message)
            if new:
                self.store.save_transfer(None, process)
        return process

    def decide_transfer(
        self, peer: MemberIdentity, message: TransferRequest
    ) -> tuple[TransferProcess, bool]:
        """`open_transfer` without saving: (the new process, True), or for a retried
        request (the stored process after it, False); the caller saves a new one, and
        holds the member's lock (``ContractRuntime.opening``) around this call and that
        save, or requests sent side by side all pass the quota's count."""
        if message.sender_id != peer.member_id or message.provider_id != self.me.member_id:
            raise UnauthorizedSenderError(f"transfer request {message.message_id}: wrong parties")
        check_sent_at(message.at, self.clock.now(), f"transfer request {message.message_id[:128]}")
        existing = self.store.find_transfer_or_gone(message.transfer_id)
        if existing is not None:
            if existing.consumer_id != peer.member_id:  # say nothing about another's transfer
                raise ContractDenied(f"transfer id {message.transfer_id} cannot be used")
            if isinstance(existing, TransferGone):  # its own, pruned: no new one in its place
                raise existing.error()
            return apply_transfer(existing, message), False
        self.within_transfer_quota(peer)
        self._keep(TRANSFER_ROW_BYTES, f"a transfer request of {peer.name}")
        stored = self.provider_agreement(message.agreement_id, peer)
        asset = self.assets[stored.signed.agreement.asset_id]
        if asset.is_stream:
            raise ContractDenied(f"asset {asset.asset_id} is a live stream: subscribe to it")
        if asset.kind is AssetKind.TRACEABILITY:
            raise ContractDenied(f"asset {asset.asset_id} is answered by Trace/Investigate")
        if asset.kind is AssetKind.PROCESS_ALONG_GENEALOGY and message.order_id is None:
            raise ContractDenied(f"asset {asset.asset_id} is transferred one order at a time")
        if message.since and (refusal := incremental_refusal(asset)) is not None:
            raise ContractDenied(refusal)
        decision = self.gate(stored, Action.READ, message.purpose, message.order_id, message.fields)
        if not decision.decision.allowed:
            logger.warning("transfer %s denied: %s", message.transfer_id, decision.decision.reason)
            raise ContractDenied(decision.decision.reason)
        process = open_transfer(message, Role.PROVIDER, received_at=self.clock.now())
        start = TransferStart(
            f"{message.transfer_id}:p-start",
            message.transfer_id,
            self.me.member_id,
            process.checkpoint,
            self.clock.now(),
        )
        return apply_transfer(process, start), True

    def within_transfer_quota(self, peer: MemberIdentity) -> None:
        """Refuse `peer` a new transfer over ``transfers_per_hour`` opened or re-read
        within the hour (`TransferQuotaError`, `over_quota`, `charge_reread`). Before an
        opening, call it under the member's lock with the save (`decide_transfer`);
        alone, it is a refusal ahead of the work (the DSP binding's, before a body)."""
        acts = self.transfer_acts.count(peer.member_id, self.clock.now())
        self._within_transfer_quota(peer, acts)

    def _within_transfer_quota(self, peer: MemberIdentity, acts: int) -> None:
        opened = self.store.transfers_opened_by(peer.member_id, self.clock.now() - QUOTA_WINDOW)
        why = over_quota(
            peer.member_id,
            "transfers (re-reads, resumes and suspensions counted)",
            opened + acts,
            "transfers_per_member_hour",
            self.transfers_per_hour,
        )
        if why is not None:
            raise TransferQuotaError(why)

    def _peer_transfer(self, peer: MemberIdentity, transfer_id: str) -> TransferProcess:
        """A transfer we provide to `peer`; one answer for unknown and foreign ids. One of
        `peer`'s that was pruned is not found, and the answer says it is no longer held
        (`TransferGoneError`): a re-read of it gets that, not a denial."""
        process = self.store.find_transfer_or_gone(transfer_id)
        if (
            process is None
            or process.role is not Role.PROVIDER
            or process.consumer_id != peer.member_id
        ):
            raise ContractDenied(f"transfer {transfer_id} is not yours")
        if isinstance(process, TransferGone):
            raise process.error()
        return process

    def pull(
        self,
        peer: MemberIdentity,
        request: PullRequest,
        batch_rows: int,
        recheck_s: float = PULL_RECHECK_S,
    ) -> Iterator[RowBatch]:
        """Provider side of Pull: the batches after the consumer's checkpoint.

        The gate is built again every `recheck_s` while the stream is open (as a live
        stream's is): once the agreement is terminated or expired, the order closed or
        no longer the consumer's, the next batch asked for raises `ContractDenied`, the
        refusal a new Pull gets, and the transfer stays STARTED at the last batch sent.
        What may still leave after such a change: the batches read within `recheck_s`
        of the last check, plus the one a transport reads ahead of the consumer; after
        a termination made in this process (`ContractStore.terminations`), only the
        batch read ahead. A
        slow consumer (the stream held open by flow control) gets no more than that
        one batch, since its next read comes after `recheck_s` and is checked first.

        A resume at an earlier checkpoint than the provider's (`check_rewind`) is not
        stored until the stream passes the provider's own position: the provider's
        record of what it sent is not replaced by the consumer's claim for the rows it
        had sent already. A re-read (`charge_reread`) counts against the member's
        transfer quota.

        Batches hold at least `MIN_BATCH_ROWS` rows (the last may hold fewer), whatever
        the consumer asks: each batch of a fresh pull saves the transfer's position, a
        transaction, and a pull of one row a batch cost the provider 400 us a row, 33
        times a batch of 100."""
        batch_rows = max(batch_rows, MIN_BATCH_ROWS)
        own = process = self._peer_transfer(peer, request.transfer_id)
        save = True
        if process.state is TransferState.COMPLETED:  # see `connector.transfer.reread`
            process, save = reread(process, request.resume_from)
        elif process.state not in (TransferState.STARTED, TransferState.SUSPENDED):
            raise ContractDenied(f"transfer {process.transfer_id} is {process.state}")
        elif request.resume_from != process.checkpoint or process.state is TransferState.SUSPENDED:
            self.charge_control(peer, process)  # a message the transfer keeps
            resume = TransferStart(
                f"{process.transfer_id}:c-resume-{uuid.uuid4().hex[:12]}",
                process.transfer_id,
                peer.member_id,
                request.resume_from,
                self.clock.now(),
            )
            process = apply_transfer(process, resume)
        gate = self._pull_gate(peer, process)
        resent = ResentRows(own, process, save, 2 * batch_rows)
        if resent.restart:
            self.charge_reread(peer)
        saved, recheck = own, GateRecheck(self.store, recheck_s)
        batches = stream_batches(process, self.qdm, gate, batch_rows=batch_rows)
        try:
            while True:
                if recheck.due():  # still allowed?
                    batches.close()
                    gate = self._pull_gate(peer, process)
                    batches = stream_batches(process, self.qdm, gate, batch_rows=batch_rows)
                    recheck.rebuilt()
                step = next(batches, None)
                if step is None:
                    return
                batch, after = step
                if resent.add(batch, after):
                    self.charge_reread(peer)
                if batch.last and save:
                    done = TransferCompletion(
                        completion_id(after, Role.PROVIDER),
                        process.transfer_id,
                        self.me.member_id,
                        after.checkpoint,
                        self.clock.now(),
                    )
                    after = apply_transfer(after, done)
                if save and (batch.last or resent.past):
                    self.store.save_transfer(saved, after)
                    saved = after
                process = after
                yield batch
        finally:
            batches.close()

    def _pull_gate(self, peer: MemberIdentity, process: TransferProcess) -> ReleaseGate:
        """The gate of a pull now (`gate`); one it does not allow is `ContractDenied`."""
        stored = self.provider_agreement(process.agreement_id, peer)
        gate = self.gate(stored, Action.READ, process.purpose, process.order_id, process.fields)
        if not gate.decision.allowed:
            raise ContractDenied(gate.decision.reason)
        return gate

    def charge_reread(self, peer: MemberIdentity) -> None:
        """Count one re-read by `peer` against ``transfers_per_member_hour`` (with the
        transfers it opened), or refuse it (`TransferQuotaError`) when that is spent.

        A re-read sends rows already sent again, as much work as a new transfer but
        stored nowhere, so the quota on new transfers did not bound it: ten re-reads of
        one acknowledged 20,000-row transfer made the provider read and encode 200,000
        rows. A consumer that lost its copy still re-reads, within the quota. Counted
        per member in the contract database (`TransferActs`): a restart, or a hosted
        tenant reloaded, gives no member a fresh quota. Under the member's lock, as a new
        transfer's count and save are: a re-read and an opening side by side cannot
        both take the quota's last one."""
        with locks_of(self).hold(peer.member_id):
            self.transfer_acts.add(
                peer.member_id,
                self.clock.now(),
                lambda before: self._within_transfer_quota(peer, before),
            )

    def charge_control(self, peer: MemberIdentity, process: TransferProcess) -> None:
        """Count a consumer's resume or suspension of `process` against
        ``transfers_per_member_hour`` as a re-read is (`charge_reread`), or refuse it,
        once the transfer holds `FREE_CONTROL_MESSAGES` messages.

        Each is a message the transfer keeps (and over DSP a resume is also an answer in
        the outbox and a call to the consumer), and nothing else bounded how often a
        member sends them: suspending and resuming its transfers as fast as it was
        answered, a member added 259 message rows a second to the provider's database
        (~0.5 GB an hour), up to `connector.transfer.MAX_MESSAGES` on every transfer it
        opened. The first few of a transfer are free: an honest consumer cut off a few
        times resumes without spending its quota."""
        if len(process.seen) >= FREE_CONTROL_MESSAGES:
            self.charge_reread(peer)

    def transfer_message(self, peer: MemberIdentity, message: object) -> TransferProcess:
        """Apply a control message (completion ack, suspension, termination) of the consumer."""
        from qdspace.connector.transfer_messages import TransferMessage

        assert isinstance(message, TransferMessage)
        if message.sender_id != peer.member_id:
            raise UnauthorizedSenderError(f"message {message.message_id}: wrong sender")
        if isinstance(message, TransferRequest):
            return self.open_transfer(peer, message)  # its time checked where it is decided
        check_sent_at(message.at, self.clock.now(), f"message {message.message_id[:128]}")
        before = self._peer_transfer(peer, message.transfer_id)
        after = apply_transfer(before, message)
        if isinstance(message, TransferSuspension) and after != before:
            self.charge_control(peer, before)  # before it is saved: refused, nothing kept
        if after != before:
            self.store.save_transfer(before, after)
        return after

    # -------------------------------------------------------- subscription

    def open_stream(self, peer: MemberIdentity, request: StreamRequest) -> tuple[ReleaseGate, int]:
        stored = self.provider_agreement(request.agreement_id, peer)
        asset = self.assets[stored.signed.agreement.asset_id]
        if not asset.is_stream:
            raise ContractDenied(f"asset {asset.asset_id} is not a live stream")
        gate = self.stream_gate(stored, request)
        if request.after_position:
            position = parse_position(request.after_position)
        elif request.from_start:
            position = 0
        else:
            position = self.last_inspection_id()
        return gate, position

    def stream_gate(self, stored: StoredAgreement, request: StreamRequest) -> ReleaseGate:
        gate = self.gate(stored, Action.STREAM, request.purpose or None, None, request.fields)
        if not gate.decision.allowed:
            raise ContractDenied(gate.decision.reason)
        return gate

    def last_inspection_id(self) -> int:
        table = Inspection.__table__  # type: ignore[attr-defined]
        with self.qdm.connect() as connection:
            value = connection.execute(select(func.max(table.c.id))).scalar_one()
        return int(value or 0)

    def stream_page(
        self, gate: ReleaseGate, position: int
    ) -> tuple[list[BatchRow], list[str], int]:
        """The next released rows of a live stream after `position`, and the new position."""
        return live_page(self.qdm, gate, position, STREAM_PAGE)
