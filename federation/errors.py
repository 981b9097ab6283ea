"""Errors of the federation room.

One base class so the node maps every federation failure to a gRPC status in one
place; each subclass also derives from the matching built-in where a caller might
reasonably catch that instead. Messages name the member, round or tensor at fault.
"""

from __future__ import annotations

from enum import StrEnum


class FederationError(Exception):
    """Base of every error raised by ``federation``; the message is safe to show a peer."""


class RefusalReason(StrEnum):
    """Why an update (or another round message) was refused; sent back to the member."""

    NOT_A_MEMBER = "not_a_member"
    WRONG_JOB = "wrong_job"
    WRONG_ROUND = "wrong_round"
    WRONG_PHASE = "wrong_phase"
    WRONG_SHAPE = "wrong_shape"
    NOT_FINITE = "not_finite"
    DUPLICATE = "duplicate"
    DEADLINE_PASSED = "deadline_passed"
    DROPPED = "dropped"
    BAD_SIGNATURE = "bad_signature"
    NO_AGREEMENT = "no_agreement"
    BUSY = "busy"
    OUT_OF_RANGE = "out_of_range"
    #: a secure-aggregation message of another wire protocol (``secagg_masks.PROTOCOL``)
    WRONG_PROTOCOL = "wrong_protocol"


class UpdateRefused(FederationError, ValueError):
    """A member's message does not fit the round; ``reason`` is machine-readable."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ParamsError(FederationError, ValueError):
    """Model parameters do not fit the expected shapes, or are not finite float32 values."""


class StrategyError(FederationError, ValueError):
    """An aggregation strategy is misconfigured, or got too few updates to run."""


class SecAggError(FederationError, ValueError):
    """A secure-aggregation message is malformed, inconsistent or arrived out of order."""


class SecAggAbort(FederationError, RuntimeError):
    """Too few members remain for the threshold: the round cannot be unmasked."""


class RosterRefused(SecAggError):
    """A member refuses the coordinator's roster: an advert is unsigned, badly signed, or
    carries a key that is not the one certificate-bound to the member it names."""


class ProtocolMismatch(RosterRefused):
    """A key advert (or a coordinator's job status) names another secure-aggregation
    wire protocol than this node's: its masks would not cancel against ours."""


class InconsistentView(SecAggAbort):
    """The consistency round failed: the coordinator showed members different survivor
    sets (or too few members vouched for the one shown); the member reveals nothing."""


class BadShares(SecAggAbort):
    """A member's Shamir shares are wrong; ``member`` names the one at fault.

    Shares are signed by the member that dealt them, so a share that does not verify
    names whoever presented it, and signed shares that do not rebuild the dealer's
    committed secret name the dealer.
    """

    def __init__(self, member: str, detail: str) -> None:
        super().__init__(f"bad shares from {member}: {detail}")
        self.member = member
        self.detail = detail


class PrivacyError(FederationError, ValueError):
    """Differential-privacy settings are invalid or the privacy budget would be exceeded."""


class VersionError(FederationError, ValueError):
    """A global model version is malformed, badly signed or not anchored as claimed."""


class CheckpointError(FederationError, OSError):
    """A coordinator checkpoint is missing, unreadable or belongs to another job."""


class TrainingError(FederationError, RuntimeError):
    """Local training could not run (missing extra, bad data, diverged loss)."""
