"""A provider whose DSP listener is bound to a wildcard address hands out data addresses
that its consumers can use only when it says where it is reached (``advertise_dsp``).

A consumer takes a data address only at the scheme, host and port of the provider's DSP
address it negotiated with (`connector.dsp_transfer.check_endpoint`: the endpoint is the
provider's to name, and the consumer dials it by itself). A provider listening on
``0.0.0.0`` (a container's usual set-up) built its addresses from its bound host, the
loopback: a consumer elsewhere could never have used them, and now refuses them with a
reason the provider's operator reads in the provider's outbox. With ``advertise_dsp`` set
to the address consumers use, the same provider's transfers run. Real node processes;
the consumer reaches the provider as ``localhost``, the name the provider advertises.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import dsp_network, ingest_sample, ok, outbox_errors, wait_for
from .test_dsp_transfer import negotiate, transfer_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


def _restart_cellex(net: LocalNetwork, settings: dict[str, str]) -> None:
    assert net.stop(["cellex"]) == {"cellex": 0}
    saved = dict(net.env)
    net.env.update(settings)
    try:
        net.start(["cellex"])
    finally:
        net.env.clear()
        net.env.update(saved)


def _transfer(oem: Any, agreement: str) -> str:
    return str(ok(oem.post("/v1/dsp/transfers", json={"agreement_id": agreement}))["transfer_id"])


def test_a_wildcard_provider_is_refused_until_it_advertises_where_it_is_reached(
    pair: LocalNetwork,
) -> None:
    port = free_port("127.0.0.1")
    provider = f"https://localhost:{port}"  # how SunArc reaches Cellex
    wildcard = {"QDSPACE_DSP_HOST": "0.0.0.0", "QDSPACE_DSP_PORT": str(port)}
    _restart_cellex(pair, wildcard)
    ingest_sample(pair, "cellex")
    with pair["sunarc"].client() as oem:
        agreement = negotiate(oem, provider, "inspections")  # callbacks go to SunArc: fine
        refused = _transfer(oem, agreement)
        cellex_outbox = wait_for(
            "Cellex's start to be refused",
            lambda: outbox_errors(pair, "cellex", "process_id", refused),
        )
        assert any(f"provider's DSP address {provider}" in e for e in cellex_outbox), cellex_outbox
        assert transfer_state(oem, refused)["state"] == "REQUESTED"  # nothing dialled

        _restart_cellex(pair, {**wildcard, "QDSPACE_ADVERTISE_DSP": provider})
        tid = _transfer(oem, agreement)
        done = wait_for(
            "the transfer from the advertised address",
            lambda: (s := transfer_state(oem, tid))["state"] == "COMPLETED" and s,
            timeout=60,
        )
        assert done["received"] > 0
