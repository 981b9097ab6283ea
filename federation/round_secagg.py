"""The coordinator's side of a secure-aggregation round: the five SecAgg phases.

With secure aggregation a round is not one upload but five phases, each closed before
the next opens: ``ADVERTISE`` (signed key adverts), ``SHARE_KEYS`` (encrypted Shamir
shares, passed on unread), ``MASKED_INPUT`` (masked updates, or a report of a member
whose shares were unusable), ``CONSISTENCY`` (the signed survivor-set check that keeps a
lying coordinator from unmasking one member's update) and ``UNMASK`` (the shares that
remove the masks). Each phase closes early when everyone it waits on has answered.
The cryptography and the per-phase bookkeeping are ``secagg_server``'s; what is here is
the coordinator's part: which member may send what in which phase, when a phase is
complete, who is left out of later attempts, and the bound on the unmasked sum
(``round_aggregate.bound_secure_sum``) before it becomes the next model.

It is its own room so that the round state machine (``rounds.Coordinator``) reads as
phases, deadlines and attempts, the same for plain and secure rounds, while this file
holds the one protocol's nine calls. ``SecureRounds`` is a mixin of ``Coordinator``
(its public methods are the coordinator's, as the transport calls them); what it needs
of the state machine (admitting a call, closing a phase, applying a sum, the status) it
declares as abstract methods, so a coordinator that lost one fails when built.

Why an attempt is not aggregated unless its reports left out both their sides: a
member that reports bad shares sends no masked input, so a hostile dealer can, by
dealing one garbage share, take one member out of the sum at will. With three members
and threshold 2 the sum is then its own update and one other's, and from the published
model it reads that member's update exactly (``2 * step - own``). Leaving both sides
of the report out would end the job, so they stay (``SecAggServer.left_out``); the sum
the dealer chose is not made: the attempt aborts (a failed job is better than a leak)
and the accused is remembered (``Coordinator.accused``): named again in a later
attempt, it is left out even if that ends the job, and that attempt is not aggregated
either (its sum is still the one the accused chose). When both sides are left out,
the sum is of the members left, at least the job's quorum, as in any round.

Why a survivor that goes silent after its masked input is left out: its consistency
signature or unmask response is needed while ``t`` is as large as the terms allow, so
withholding it would make every attempt abort with nobody at fault. A survivor whose
silence aborted the attempt is left out of the later ones, as a member whose shares
failed is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NoReturn

from nacl.signing import VerifyKey

from qdspace.federation.admission import refuse_impersonation, refuse_unreadable
from qdspace.federation.errors import BadShares, RefusalReason, SecAggAbort, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Vector
from qdspace.federation.round_aggregate import bound_secure_sum
from qdspace.federation.round_status import Phase, RoundStatus
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    MaskedPieces,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.secagg_server import SecAggServer


class SecureRounds(ABC):
    """The secure-aggregation calls and phase closings of ``rounds.Coordinator``."""

    # the coordinator's state this side reads and moves (``rounds.Coordinator``'s fields)
    job: JobSpec
    round: int
    attempt: int
    phase: Phase
    deadline: float
    detail: str
    excluded: frozenset[str]
    accused: frozenset[str]
    _secagg: SecAggServer | None

    # --- what the state machine provides -----------------------------------------------

    @abstractmethod
    def status(self) -> RoundStatus:
        """The round's public status (``Coordinator.status``)."""

    @abstractmethod
    def _admit(
        self, member: str, round_: int, phase: Phase, now: float, attempt: int | None = None
    ) -> None:
        """Refuse a stranger or a call out of turn (``Coordinator._admit``)."""

    @abstractmethod
    def _close(self, now: float) -> None:
        """Close the current phase (``Coordinator._close``)."""

    @abstractmethod
    def _apply_sum(
        self,
        total: Vector,
        members: tuple[str, ...],
        bounded: tuple[str, ...],
        now: float,
        *,
        sum_bounded: bool = False,
    ) -> None:
        """Move the global model by the mean of a sum (``Coordinator._apply_sum``)."""

    # --- attempts ----------------------------------------------------------------------

    @property
    def secagg_config(self) -> SecAggConfig | None:
        """What members of the current secure round must agree on (None in plain rounds)."""
        return None if self._secagg is None else self._secagg.config

    @property
    def _secure_quorum(self) -> int:
        """Members a secure round needs: each masks with at least t others."""
        return max(self.job.min_members, self.job.threshold + 1)

    def _open_secure_attempt(self) -> None:
        """A fresh SecAgg server for this attempt (keys and masks bound to its number)."""
        config = self.job.secagg_config(self.round, self.attempt)
        self._secagg = SecAggServer(config, set(self.job.members) - self.excluded)
        self.phase = Phase.ADVERTISE

    def _leave_out_reported(self) -> None:
        """The ending attempt's bad-share reports leave members out of the job."""
        if self._secagg is not None and self._secagg.reports:
            out, stay, said = self._secagg.left_out(self._secure_quorum, self.accused)
            self.excluded = self.excluded | out
            self.accused = (self.accused | stay) - out
            self.detail += f"; {said}"

    def _server(self) -> SecAggServer:
        if self._secagg is None:
            raise UpdateRefused(RefusalReason.WRONG_PHASE, "this job has no secure aggregation")
        return self._secagg

    def _expect_masked(self, member: str) -> None:
        """Refuse a masked-input header ``submit_masked`` would refuse (``expect``)."""
        server = self._server()
        if member not in server.shared:
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} did not share keys")
        if member in server.survivors:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already sent its input")
        if member in server.reports:
            raise UpdateRefused(RefusalReason.DROPPED, f"{member} reported bad shares")

    def _readable(self, member: str, round_: int, phase: Phase, attempt: int) -> None:
        refuse_unreadable(self.status(), self.job.members, member, round_, phase, attempt)

    # --- the five phases' calls --------------------------------------------------------

    def submit_advert(
        self,
        member: str,
        round_: int,
        attempt: int,
        advert: KeyAdvert,
        key: VerifyKey,
        now: float,
    ) -> None:
        """A member's signed key advert; ``key`` is its certificate-bound Ed25519 key."""
        refuse_impersonation(member, advert.member)  # identity first: impersonation is never "late"
        self._admit(member, round_, Phase.ADVERTISE, now, attempt)
        server = self._server()
        server.receive_advert(advert, key)
        if len(server.advertised) == len(set(self.job.members) - self.excluded):
            self._close(now)

    def roster(self, member: str, round_: int, attempt: int) -> tuple[KeyAdvert, ...]:
        self._readable(member, round_, Phase.SHARE_KEYS, attempt)
        return self._server().roster

    def submit_shares(
        self,
        member: str,
        round_: int,
        attempt: int,
        shares: Sequence[EncryptedShare],
        now: float,
    ) -> None:
        self._admit(member, round_, Phase.SHARE_KEYS, now, attempt)
        server = self._server()
        server.receive_shares(member, shares)
        if len(server.shared) == len(server.roster):
            self._close(now)

    def inbox(self, member: str, round_: int, attempt: int) -> list[EncryptedShare]:
        self._readable(member, round_, Phase.MASKED_INPUT, attempt)
        return self._server().inbox(member)

    def submit_masked(
        self,
        member: str,
        round_: int,
        attempt: int,
        masked: MaskedInput | MaskedPieces,
        now: float,
    ) -> None:
        refuse_impersonation(member, masked.member)
        self._admit(member, round_, Phase.MASKED_INPUT, now, attempt)
        server = self._server()
        server.receive_masked(masked)
        if len(server.survivors) + len(server.reports) == len(server.shared):
            self._close(now)

    def submit_report(
        self, member: str, round_: int, attempt: int, accused: str, now: float
    ) -> None:
        """``member`` found ``accused``'s key shares unusable and sends no masked input."""
        self._admit(member, round_, Phase.MASKED_INPUT, now, attempt)
        server = self._server()
        server.receive_report(member, accused)
        if len(server.survivors) + len(server.reports) == len(server.shared):
            self._close(now)

    def unmask_request(self, member: str, round_: int, attempt: int) -> UnmaskRequest:
        """The split to sign (``CONSISTENCY``), then with the signatures on it (``UNMASK``)."""
        self._readable(member, round_, Phase.CONSISTENCY, attempt)
        return self._server().unmask_request()

    def submit_confirmation(
        self,
        member: str,
        round_: int,
        attempt: int,
        confirmation: Confirmation,
        now: float,
    ) -> None:
        refuse_impersonation(member, confirmation.member)
        self._admit(member, round_, Phase.CONSISTENCY, now, attempt)
        server = self._server()
        server.receive_confirmation(confirmation)
        if len(server.confirmed) == len(server.survivors):
            self._close(now)

    def submit_unmask(
        self, member: str, round_: int, attempt: int, response: UnmaskResponse, now: float
    ) -> None:
        refuse_impersonation(member, response.member)
        self._admit(member, round_, Phase.UNMASK, now, attempt)
        server = self._server()
        server.receive_unmask(response)
        if server.responses == len(server.survivors):
            self._close(now)

    # --- closing a phase ---------------------------------------------------------------

    def _close_secagg(self, now: float) -> None:
        server = self._server()
        if self.phase is Phase.ADVERTISE:
            # each member masks with at least t others (`SecAggClient.masking`)
            needed = self._secure_quorum
            if len(server.advertised) < needed:
                raise SecAggAbort(
                    f"{len(server.advertised)} members advertised keys, the round needs {needed}"
                )
            server.close_adverts()
            self.phase = Phase.SHARE_KEYS
        elif self.phase is Phase.SHARE_KEYS:
            server.close_shares()
            self.phase = Phase.MASKED_INPUT
        elif self.phase is Phase.MASKED_INPUT:
            out = server.left_out(self._secure_quorum, self.accused)[0]
            if any(not {r, a} <= out for r, a in server.reports.items()):
                raise SecAggAbort(
                    "a bad-share report did not leave out both its sides: without the "
                    "reporter the sum would be the one the accused chose, so it is not made"
                )
            server.close_masked()
            self.phase = Phase.CONSISTENCY
        elif self.phase is Phase.CONSISTENCY:
            try:
                server.close_consistency()
            except SecAggAbort as exc:
                self._leave_out_silent(server, server.confirmed, "consistency signature", exc)
            self.phase = Phase.UNMASK
        elif self.phase is Phase.UNMASK:
            try:
                result = server.finish()
            except SecAggAbort as exc:
                if isinstance(exc, BadShares):
                    raise
                self._leave_out_silent(server, server.responded, "unmask response", exc)
            quantizer = server.config.quantizer
            total, over = bound_secure_sum(result.total, self.job, quantizer, len(result.members))
            self._apply_sum(total, result.members, (), now, sum_bounded=over)
            return
        self.deadline = now + self.job.phase_timeout_s

    def _leave_out_silent(
        self, server: SecAggServer, answered: frozenset[str], what: str, exc: SecAggAbort
    ) -> NoReturn:
        """The attempt aborts for want of answers: survivors that sent their masked input
        and then no ``what`` are left out of the later attempts (module docstring)."""
        silent = sorted(set(server.survivors) - answered - {self.job.coordinator})
        if not silent:
            raise exc
        self.excluded = self.excluded | set(silent)
        raise SecAggAbort(
            f"{exc}; {', '.join(silent)} sent a masked input and then no {what}: "
            "left out of the job's later attempts"
        ) from exc
