"""The DSP binding's transfer moves, over the runtime and the transfer state machine.

Why here: the routes (`node.dsp.transfers`) decode and answer; this module decides
what each DSP transfer message means for the one transfer state machine
(`connector.transfer`) that the gRPC wire drives too, and what goes back.

Two pids, one local id. The transfer's digest chain starts from its local id
(`Checkpoint.genesis`), and both sides must build the same chain, so both keep the
transfer under the same local id: the consumer's pid (the one id both know before the
provider answers; a provider's own pid is a fresh ``urn:uuid``). A consumer pid that is
already another member's transfer is refused, as the gRPC wire refuses a taken id. The
message ids of the transfer are made from its local id with an end of up to
`LONGEST_SUFFIX` characters (``:dsp-request``, ``:p-start``, `control_id`), here and in
the transfer machine, and every one of them is kept in a 128-character id column
(`codec.MAX_PID`): a consumer pid longer than `MAX_CONSUMER_PID` is refused (400, naming
``consumerPid``). A 128-character one was a 500 on PostgreSQL; a 105-character one opened
a transfer whose suspension or termination (a 128-plus-character message id) then
failed, leaving its data token valid.

The provider decides a request exactly as on the gRPC wire (`ProviderTransfers.
open_transfer`: the agreement, the release gate now); a live-stream asset is decided
by the stream gate (`stream_gate`) and served as a live stream at the same data address.
The agreed purpose and, when the agreement names exactly one, order become the
request's (DSP's TransferRequestMessage has neither). A live stream starts where the
provider's inspections stood when it accepted the request (the process's ``since``), not
where they stand when the consumer first connects: rows stored in between are delivered.
The answer, a TransferStartMessage with the data address and a fresh token
(`node.dsp.edr`), is queued in the contract outbox for the consumer's callback, in the
commit that opens the transfer and binds its pids: a node that fails between them keeps
none of it, and the consumer's retry of the same request is decided afresh.

Incoming control messages get message ids made here (DSP has none): ``<id>:dsp-<kind>:
<random>``; the machine accepts each kind again in the state it leads to (a retried
suspension is a no-op), so a retried delivery changes nothing, and every one of them
moves the token generation on (`edr.generation`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_transfer as wire
from qdspace.connector.contract_errors import (
    ContractDenied,
    IllegalTransitionError,
    UnknownContractError,
)
from qdspace.connector.contract_store import DspProcess, OutboxMessage
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import (
    TransferProcess,
    TransferState,
    acknowledged,
    completion_id,
    open_transfer,
)
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferMessage,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
)
from qdspace.node.dsp.client import outbox_message
from qdspace.node.dsp.edr import DataTokens, generation
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.model import LeftOperand, Policy

TRANSFER = "transfer"
KINDS = ("start", "suspension", "termination", "completion")


#: a retried TransferRequestMessage queues the start again only while the process has
#: queued fewer messages than this (a consumer retrying in a loop costs rows and POSTs)
MAX_STARTS = 16


def control_id(local_id: str, kind: str) -> str:
    return f"{local_id}:dsp-{kind}:{uuid.uuid4().hex[:12]}"


#: the longest end a message id of a transfer has after its local id: a control message's
#: (`control_id`, of the binding's kinds and the consumer's ``resume`` and ``out``); the
#: others are shorter (``:dsp-request``, ``:p-start``, ``:c-resume-<12 hex>``,
#: ``:p-complete-<n>``)
LONGEST_SUFFIX = max(len(control_id("", kind)) for kind in (*KINDS, "resume", "out"))
#: the longest consumerPid a provider takes: it is the transfer's local id (see the module
#: docstring), and its message ids must fit the id columns
MAX_CONSUMER_PID = codec.MAX_PID - LONGEST_SUFFIX


def check_consumer_pid(consumer_pid: str) -> None:
    """Refuse a consumerPid too long to make the transfer's message ids from."""
    if len(consumer_pid) > MAX_CONSUMER_PID:
        raise codec.DspMessageError(
            "$.consumerPid",
            f"must be at most {MAX_CONSUMER_PID} characters (the transfer's message ids are "
            f"made from it and must fit {codec.MAX_PID}), got {len(consumer_pid)}",
        )


def agreed_scope(policy: Policy) -> tuple[str | None, str | None]:
    """The purpose (the first agreed, by name) and the order (when exactly one is agreed)."""
    purposes: set[str] = set()
    orders: set[str] = set()
    for permission in policy.permissions:
        for constraint in permission.constraints:
            right = constraint.right_operand
            values = set(right) if isinstance(right, frozenset) else {str(right)}
            if constraint.left_operand is LeftOperand.PURPOSE:
                purposes |= values
            elif constraint.left_operand is LeftOperand.ORDER:
                orders |= values
    purpose = min(purposes) if purposes else None
    order = next(iter(orders)) if len(orders) == 1 else None
    return purpose, order


def pids(row: DspProcess) -> tuple[str, str]:
    """(providerPid, consumerPid) of a bound transfer."""
    if row.role == Role.PROVIDER.value:
        return row.own_pid, row.peer_pid or row.local_id
    return row.peer_pid or "", row.own_pid


def peer_url(row: DspProcess, kind: str) -> str:
    """Where our message of `kind` about `row` goes (the provider's address or the
    consumer's callback address; both are the base the DSP paths hang off)."""
    provider_pid, consumer_pid = pids(row)
    their = consumer_pid if row.role == Role.PROVIDER.value else provider_pid
    return f"{row.callback}/transfers/{their}/{kind}"


def message_body(row: DspProcess, kind: str, reason: str = "") -> dict[str, Any]:
    provider_pid, consumer_pid = pids(row)
    if kind == "start":
        return wire.start_message(provider_pid, consumer_pid, None)
    if kind == "suspension":
        return wire.suspension_message(provider_pid, consumer_pid, reason)
    if kind == "termination":
        return wire.termination_message(provider_pid, consumer_pid, reason)
    return wire.completion_message(provider_pid, consumer_pid)


@dataclass
class DspTransferMoves:
    """The transfer moves of the DSP binding on both sides (one per node)."""

    runtime: ContractRuntime
    tokens: DataTokens
    base_url: str

    @property
    def me(self) -> str:
        return self.runtime.me.member_id

    def owned(self, pid: str, peer: MemberIdentity) -> DspProcess:
        """A transfer addressed by our pid and `peer`'s; anything else is "not found"."""
        row = self.runtime.store.dsp.by_own_pid(TRANSFER, pid)
        if row is None or row.peer_id != peer.member_id:
            raise UnknownContractError(f"no transfer {pid[:128]} here")
        return row

    def load(self, row: DspProcess) -> TransferProcess:
        process = self.runtime.store.find_transfer(row.local_id)
        if process is None:
            raise UnknownContractError(f"no transfer {row.own_pid[:128]} here")
        return process

    def state_body(self, row: DspProcess) -> dict[str, Any]:
        provider_pid, consumer_pid = pids(row)
        return wire.process(provider_pid, consumer_pid, self.load(row).state.value)

    # ------------------------------------------------------------ provider

    def open(self, peer: MemberIdentity, ask: wire.TransferAsk) -> DspProcess:
        """Provider: decide a TransferRequestMessage and queue the start (or a retry's
        binding as it was)."""
        check_consumer_pid(ask.consumer_pid)
        store, rt = self.runtime.store, self.runtime
        # the look for a retry, the quota and the save: one at a time per member, so
        # concurrent requests neither open a transfer twice nor pass the quota together
        with rt.opening(peer):
            existing = store.dsp.by_peer_pid(TRANSFER, peer.member_id, ask.consumer_pid)
            if existing is not None:  # a retry: the start again (it may have been lost)
                process = self.load(existing)
                owed, queued = store.outbox.queued_for(peer.member_id, existing.local_id)
                # not a new start while one is owed (that one is made due now: the consumer is
                # there), and not for ever: each is a row and a POST
                if process.state is TransferState.STARTED and owed:
                    store.outbox.hasten(peer.member_id, existing.local_id, rt.clock.now())
                elif process.state is TransferState.STARTED and queued < MAX_STARTS:
                    store.enqueue([self.start_for(existing, process)], rt.clock.now())
                return existing
            if store.dsp.by_local(TRANSFER, ask.consumer_pid) is not None:
                raise ContractDenied(f"transfer id {ask.consumer_pid[:128]} cannot be used")
            stored = rt.provider_agreement(ask.agreement_id, peer)
            terms = stored.signed.agreement
            purpose, order = agreed_scope(terms.policy)
            now = rt.clock.now()
            local = ask.consumer_pid
            stream = rt.assets[terms.asset_id].is_stream
            # a live stream carries the rows stored after this moment, wherever the consumer's
            # first connection to the data address happens to fall (`since`, kept with the process)
            since = str(rt.last_inspection_id()) if stream else ""
            request = TransferRequest(
                f"{local}:dsp-request", local, peer.member_id, terms.agreement_id, self.me, now,
                purpose=purpose, order_id=order, since=since,
            )  # fmt: skip
            if stream:
                if store.find_transfer_or_gone(local) is not None:  # held, or pruned
                    raise ContractDenied(f"transfer id {local[:128]} cannot be used")
                rt.within_transfer_quota(peer)
                rt.stream_gate(stored, StreamRequest(local, terms.agreement_id, purpose or ""))
                process = open_transfer(request, Role.PROVIDER)
                start = TransferStart(f"{local}:p-start", local, self.me, process.checkpoint, now)
                process, new = apply_transfer(process, start), True
            else:
                process, new = rt.decide_transfer(peer, request)
            row = DspProcess(
                TRANSFER, local, Role.PROVIDER.value, peer.member_id,
                f"urn:uuid:{uuid.uuid4()}", ask.callback, local,
            )  # fmt: skip
            # the process, its binding and the start: one commit (`open_dsp_transfer`)
            start_message = self.start_for(row, process)
            store.open_dsp_transfer(process if new else None, row, [start_message], now)
            return row

    def is_stream(self, process: TransferProcess) -> bool:
        terms = self.runtime.store.agreement(process.agreement_id).signed.agreement
        return self.runtime.assets[terms.asset_id].is_stream

    def address(self, row: DspProcess, process: TransferProcess) -> wire.DataAddress:
        token = self.tokens.issue(row.own_pid, row.peer_id, generation(process))
        delivery = wire.STREAM if self.is_stream(process) else wire.BATCHES
        return wire.DataAddress(f"{self.base_url}/data/{row.own_pid}", token, delivery)

    def start_for(self, row: DspProcess, process: TransferProcess) -> OutboxMessage:
        """The provider's TransferStartMessage with a fresh data address, for the outbox."""
        provider_pid, consumer_pid = pids(row)
        body = wire.start_message(provider_pid, consumer_pid, self.address(row, process))
        url = f"{row.callback}/transfers/{consumer_pid}/start"
        return outbox_message(row.peer_id, row.local_id, control_id(row.local_id, "out"), url, body)

    # ------------------------------------------------------------- either

    def incoming(
        self, peer: MemberIdentity, row: DspProcess, kind: str, message: Any
    ) -> TransferProcess:
        """Apply a peer's control message of `kind` to the transfer `row` binds."""
        before = self.load(row)
        now = max(self.runtime.clock.now(), before.updated_at)
        resume = kind == "start" and row.role == Role.PROVIDER.value  # a new address
        if resume and before.state is TransferState.COMPLETED:
            return self._readdress(peer, row, before, now)
        after = apply_transfer(before, self._message(peer.member_id, row, before, kind, message))
        if row.role == Role.PROVIDER.value and kind in ("start", "suspension") and after != before:
            self.runtime.charge_control(peer, before)  # a kept message (a start: an answer)
        outbox: list[OutboxMessage] = []
        if resume:
            outbox.append(self.start_for(row, after))
        if after != before:
            self.runtime.store.save_transfer(before, after, outbox)
        elif outbox:
            self.runtime.store.enqueue(outbox, now)
        return after

    def _readdress(
        self, peer: MemberIdentity, row: DspProcess, process: TransferProcess, now: datetime
    ) -> TransferProcess:
        """A consumer's resume of a pull we completed: a new data address, the transfer
        left as it is. We complete a pull when its last batch is sent, not when it is
        stored: a consumer that could not store it (no room on its disk) or was cut off
        before it did, and restarted (its addresses lived in memory), asks again, and
        its pull re-reads from its own checkpoint (`connector.transfer.reread`). Refused
        once it acknowledged the completion (it said it holds everything), and each such
        answer counts as a re-read against ``transfers_per_member_hour`` (each is a row of
        our outbox and a call to the consumer: unbounded, a member could fill both)."""
        if acknowledged(process):
            raise IllegalTransitionError(
                f"transfer {row.own_pid}", process.state.value, "a resume after its acknowledgement"
            )
        self.runtime.charge_reread(peer)
        self.runtime.store.enqueue([self.start_for(row, process)], now)
        return process

    def _message(
        self, sender: str, row: DspProcess, process: TransferProcess, kind: str, message: Any
    ) -> TransferMessage:
        local = row.local_id
        now = max(self.runtime.clock.now(), process.updated_at)
        if kind == "start":
            return TransferStart(control_id(local, kind), local, sender, process.checkpoint, now)
        if kind == "suspension":
            return TransferSuspension(
                control_id(local, kind), local, sender, codec.reason(message), now
            )
        if kind == "termination":
            return TransferTermination(
                control_id(local, kind), local, sender, codec.reason(message), now
            )
        if row.role == Role.PROVIDER.value:  # the consumer acknowledges having it all
            if process.state is not TransferState.COMPLETED or process.final is None:
                raise IllegalTransitionError(
                    f"transfer {row.own_pid}", process.state.value, "a consumer's completion"
                )
            cid = completion_id(process, Role.CONSUMER)
            return TransferCompletion(cid, local, sender, process.final, now)
        pid = completion_id(process, Role.PROVIDER)
        return TransferCompletion(pid, local, sender, process.checkpoint, now)

    def own(self, row: DspProcess, kind: str, reason: str) -> TransferProcess:
        """Apply our own control message of `kind` (suspension, termination, a provider's
        resume) to the transfer; the caller sends it."""
        before = self.load(row)
        message = self._message(self.me, row, before, kind, {"reason": [reason]})
        after = apply_transfer(before, message)
        outbox = [self.start_for(row, after)] if kind == "start" else []
        if after != before or outbox:
            self.runtime.store.save_transfer(before, after, outbox)
        return after
