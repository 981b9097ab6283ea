"""Data-plane tokens of the DSP binding (`node.dsp.edr`): bound to a pid and a consumer,
expiring, revoked by the transfer's generation, unforgeable without the node's key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nacl.signing import SigningKey

from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess, apply, open_transfer
from qdspace.connector.transfer_messages import (
    TransferRequest,
    TransferStart,
    TransferSuspension,
)
from qdspace.node.dsp.edr import DataTokenError, DataTokens, generation

KEY = SigningKey(b"\x01" * 32)
AT = datetime(2026, 12, 3, tzinfo=UTC)


def _process() -> TransferProcess:
    request = TransferRequest("t1:dsp-request", "t1", "consumer", "agr-1", "provider", AT)
    return open_transfer(request, Role.PROVIDER)


def test_a_token_is_good_for_its_pid_consumer_and_time_only() -> None:
    tokens = DataTokens(KEY, 60)
    token = tokens.issue("p1", "consumer", 1, now=1000)
    assert tokens.verify(token, "p1", "consumer", now=1059).generation == 1
    with pytest.raises(DataTokenError, match="expired"):
        tokens.verify(token, "p1", "consumer", now=1060)
    with pytest.raises(DataTokenError, match="another"):
        tokens.verify(token, "p2", "consumer", now=1000)
    with pytest.raises(DataTokenError, match="another"):
        tokens.verify(token, "p1", "someone-else", now=1000)
    with pytest.raises(DataTokenError, match="not issued here"):
        DataTokens(SigningKey(b"\x02" * 32), 60).verify(token, "p1", "consumer", now=1000)
    assert DataTokens(KEY, 60).verify(token, "p1", "consumer", now=1000)  # survives a restart


@pytest.mark.parametrize(
    "token", ["", "a", "a.b.c", "!!!.???", "x" * 2000, "eyJwaWQiOiJwMSJ9.AAAA"]
)
def test_junk_tokens_are_refused(token: str) -> None:
    with pytest.raises(DataTokenError):
        DataTokens(KEY, 60).verify(token, "p1", "consumer", now=1000)


def test_a_control_message_revokes_earlier_tokens() -> None:
    tokens = DataTokens(KEY, 60)
    process = _process()
    gen = generation(process)
    claims = tokens.verify(tokens.issue("p1", "consumer", gen), "p1", "consumer")
    tokens.check_current(claims, process)
    started = apply(process, TransferStart("t1:p-start", "t1", "provider", process.checkpoint, AT))
    paused = apply(started, TransferSuspension("t1:dsp-suspension:1", "t1", "consumer", "", AT))
    assert generation(paused) == gen + 1
    with pytest.raises(DataTokenError, match="revoked"):
        tokens.check_current(claims, paused)
