"""Who may send what, when: the refusal rules of a round.

Every message a member sends the coordinator is first held against where the job is:
a stranger, a message for another round or attempt, one in another member's name,
one for a phase that is not open. Which refusal it gets matters to the member (a
``DEADLINE_PASSED`` says "you were late", a ``WRONG_PHASE`` says "you are confused"),
so the rules are spelled out here, as pure functions of the job's position
(``RoundStatus``), apart from the state machine (``rounds``) that moves it.
The checks run in the order the coordinator applies them: identity first
(impersonation is never "late"), then round, attempt, phase.
"""

from __future__ import annotations

from collections.abc import Collection

from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.round_status import Phase, RoundStatus

SECAGG_PHASES = (
    Phase.ADVERTISE,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY,
    Phase.UNMASK,
)
_ORDER = {p: i for i, p in enumerate((Phase.TRAINING, *SECAGG_PHASES, Phase.DONE))}


def _finished(phase: Phase) -> bool:
    return phase in (Phase.DONE, Phase.FAILED)


def refuse_stranger(members: Collection[str], job_id: str, member: str) -> None:
    if member not in members:
        raise UpdateRefused(RefusalReason.NOT_A_MEMBER, f"{member} is not a member of job {job_id}")


def refuse_impersonation(member: str, claimed: str) -> None:
    """Refuse a message ``member`` sent in another's name. The name claimed is the
    sender's text, answered and logged: shown cut and quoted when it is not a short
    printable name (a member claimed a 900 KB one, line breaks and all)."""
    if member != claimed:
        raise UpdateRefused(
            RefusalReason.NOT_A_MEMBER,
            f"{member} sent a message in the name of {shown_name(claimed)}",
        )


def shown_name(name: str) -> str:
    """A member name a peer sent, as a refusal shows it: as it is when it is a short
    printable name, else its first 64 characters quoted (escapes visible)."""
    if len(name) <= 64 and name.isprintable():
        return name
    return f"{name[:64]!r}" + (f" (+{len(name) - 64} characters)" if len(name) > 64 else "")


def refuse_out_of_turn(
    current: RoundStatus, member: str, round_: int, phase: Phase, attempt: int | None
) -> None:
    """Refuse a message for another round, attempt or phase than ``current``'s."""
    finished = _finished(current.phase)
    if round_ != current.round or finished:
        where = current.phase.value if finished else f"in round {current.round}"
        closed = " (that round is closed)" if round_ < current.round else ""
        raise UpdateRefused(
            RefusalReason.WRONG_ROUND,
            f"{member} sent a message for round {round_}{closed}; job {current.job_id} is {where}",
        )
    if attempt is not None and attempt != current.attempt:
        raise UpdateRefused(
            RefusalReason.WRONG_ROUND,
            f"{member} sent a message for attempt {attempt} of round {round_}; "
            f"the round is in attempt {current.attempt} (fresh keys are needed)",
        )
    if current.phase is not phase:
        same_flow = (phase in SECAGG_PHASES) == (current.phase in SECAGG_PHASES)
        late = same_flow and _ORDER[current.phase] > _ORDER[phase]
        raise UpdateRefused(
            RefusalReason.DEADLINE_PASSED if late else RefusalReason.WRONG_PHASE,
            f"{phase.value} message from {member}, round {round_} is in {current.phase.value}",
        )


def refuse_unreadable(
    current: RoundStatus,
    members: Collection[str],
    member: str,
    round_: int,
    phase: Phase,
    attempt: int,
) -> None:
    """Refuse a read of ``phase``'s data (roster, inbox, unmask request) that is not open yet
    or belongs to another round or attempt."""
    if member not in members:
        raise UpdateRefused(RefusalReason.NOT_A_MEMBER, f"{member} is not a member")
    if round_ != current.round or attempt != current.attempt:
        raise UpdateRefused(
            RefusalReason.WRONG_ROUND,
            f"round {round_} attempt {attempt} is not current (round {current.round} "
            f"attempt {current.attempt})",
        )
    if (
        _finished(current.phase)
        or current.phase not in SECAGG_PHASES
        or _ORDER[current.phase] < _ORDER[phase]
    ):
        raise UpdateRefused(
            RefusalReason.WRONG_PHASE,
            f"round {round_} {phase.value} data is not available (job is in round "
            f"{current.round}, {current.phase.value})",
        )
