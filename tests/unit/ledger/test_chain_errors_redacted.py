"""A chain error names the endpoint without the API key its URL carries: the message
reaches the anchorer's last error, the node's log, the console and API problems."""

from __future__ import annotations

import socket

import pytest

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.deploy import deploy_anchor
from qdspace.ledger.errors import ChainUnavailable
from qdspace.ledger.keys import ChainSigner

KEY, TOKEN, PASSWORD = "3f9a1c0b7d2e4f6a8b9c0d1e2f3a4b5c", "tok-8c1d2e3f4a5b6c7d", "pw-secret-1"


@pytest.fixture
def keyed_url() -> str:
    """A hosted-style endpoint URL on a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://alice:{PASSWORD}@127.0.0.1:{port}/v3/{KEY}?apikey={TOKEN}"


def _shown_without_secrets(message: str) -> None:
    assert "127.0.0.1" in message and "/v3/" in message
    for secret in (KEY, TOKEN, PASSWORD, "alice"):
        assert secret not in message


def test_an_unreachable_chain_is_named_without_its_key(keyed_url: str) -> None:
    client = LedgerClient(keyed_url, "0x" + "00" * 20, timeout_s=2)
    with pytest.raises(ChainUnavailable) as caught:
        _ = client.chain_id
    _shown_without_secrets(str(caught.value))


def test_a_deploy_to_an_unreachable_chain_is_named_without_its_key(keyed_url: str) -> None:
    with pytest.raises(ChainUnavailable) as caught:
        deploy_anchor(keyed_url, ChainSigner.from_hex("11" * 32, source="test"), timeout_s=2)
    _shown_without_secrets(str(caught.value))
