"""Secure aggregation's wire protocol v2: AES-128-CTR masks, and no mixing with v1.

v1 expanded 32-byte seeds with ChaCha20; v2 expands 16-byte seeds with AES-128-CTR.
The same secrets give different masks under the two, so a member of one protocol in a
round of the other would leave masks in the sum that no one removes. These tests pin
the v2 PRG to an independent formulation of AES-128-CTR, show what a mixed round would
compute, and check that every place a protocol is named refuses the other one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qdspace.federation.errors import ProtocolMismatch, RefusalReason, SecAggError, UpdateRefused
from qdspace.federation.host import JobHost
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_masks import (
    DOMAIN,
    PROTOCOL,
    SEED_BYTES,
    MaskStreams,
    Prg,
    expand,
    self_seed,
)
from qdspace.federation.secagg_messages import protocol_mismatch, verify_advert
from qdspace.federation.secagg_server import SecAggServer
from qdspace.node.rpc.federation_serde import (
    advert_from_proto,
    advert_to_proto,
    status_from_proto,
    status_to_proto,
)
from qdspace.protocols.v1 import federation_pb2 as pb

from .test_fl_host import INITIAL, KEY
from .test_fl_host import job as host_job
from .test_fl_secagg import SIGNING, VERIFY, client, config, inputs, run_round


def test_the_prg_is_aes128_counter_mode_from_block_zero() -> None:
    # AES-128-CTR keystream = AES_k(0), AES_k(1), ... with the counter big-endian in
    # the whole block: computed here with ECB, not the CTR mode the PRG uses.
    key = bytes(range(16))
    counters = b"".join(i.to_bytes(16, "big") for i in range(1000))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    reference = np.frombuffer(ecb.update(counters) + ecb.finalize(), dtype="<u4")
    assert np.array_equal(expand(key, reference.size), reference)
    assert np.array_equal(Prg(37).expand(key), reference[:37])
    assert SEED_BYTES == 16 and len(self_seed(bytes(32), b"ctx")) == 16
    assert PROTOCOL == "qdspace-secagg-v2" and PROTOCOL.encode() == DOMAIN


def test_a_v1_seed_is_refused_not_cut() -> None:
    for wrong in (bytes(32), bytes(15), b""):
        with pytest.raises(SecAggError, match="mask seed has 16 bytes"):
            expand(wrong, 4)
        with pytest.raises(SecAggError, match="mask seed has 16 bytes"):
            MaskStreams([(wrong, 1)])


def test_a_v1_mask_does_not_cancel_a_v2_mask() -> None:
    # What the protocol binding prevents: the same secret under ChaCha20 (v1) and under
    # AES-128-CTR (v2) gives unrelated masks, so a mixed sum would be uniform noise.
    secret = bytes(range(32))
    n = 10_000
    chacha = Cipher(algorithms.ChaCha20(secret, bytes(16)), mode=None).encryptor()
    v1 = np.frombuffer(chacha.update(bytes(4 * n)), dtype="<u4")
    v2 = expand(secret[:16], n)
    assert np.count_nonzero(v1 - v2) > n - 5


def test_an_advert_of_another_protocol_is_refused_by_name() -> None:
    cfg = config(2)
    server = SecAggServer(cfg, {"a", "b"})
    honest = client("a", cfg).advertise()
    for other, named in (("", "no protocol (a qdspace-secagg-v1 node)"), ("v3", "'v3'")):
        foreign = dataclasses.replace(honest, protocol=other)
        with pytest.raises(UpdateRefused) as exc:
            server.receive_advert(foreign, VERIFY["a"])
        assert exc.value.reason is RefusalReason.WRONG_PROTOCOL
        assert f"the key advert of a runs secure-aggregation protocol {named}" in str(exc.value)
        assert str(exc.value).startswith("wrong_protocol: ")
        # members refuse it in a roster too (before its signature is looked at)
        with pytest.raises(ProtocolMismatch, match="would not cancel"):
            verify_advert(foreign, cfg, VERIFY["a"])
    server.receive_advert(honest, VERIFY["a"])  # the same advert, of our protocol: accepted
    assert server.advertised == {"a"}


def test_the_protocol_travels_in_adverts_and_secure_job_status() -> None:
    advert = SecAggClient("a", config(2), SIGNING["a"]).advertise()
    assert advert.protocol == PROTOCOL
    assert advert_from_proto(advert_to_proto(advert)) == advert
    # a v1 member's advert has no field 7: it reads as no protocol
    v1 = advert_to_proto(advert)
    v1.ClearField("protocol")
    assert advert_from_proto(pb.KeyAdvert.FromString(v1.SerializeToString())).protocol == ""
    assert protocol_mismatch("coordinator x", PROTOCOL) is None
    assert "coordinator x runs" in (protocol_mismatch("coordinator x", "") or "")


def test_a_v2_round_removes_every_mask_bit_for_bit() -> None:
    # the unmasked sum is exactly the sum of the quantised inputs, with a member dropped
    # after masking too (its pairwise masks rebuilt from its key shares)
    quantizer = config(2).quantizer
    for dropped in ((), ("m1",)):
        vectors = inputs(3, seed=7)
        result, _, _ = run_round(vectors, threshold=2, skip_mask=dropped)
        kept = [v for m, v in vectors.items() if m not in dropped]
        quantised = np.sum([quantizer.encode(v) for v in kept], axis=0, dtype=np.uint32)
        assert np.array_equal(result.total, quantizer.decode(quantised))


def test_a_secure_jobs_status_names_the_protocol(tmp_path: Path) -> None:
    secure_job = host_job(
        job_id="el-s",
        secure_aggregation=True,
        threshold=2,
        update_clip=1.0,
        members=("sunarc", "cellex", "polycell"),
    )
    secure = JobHost.create(tmp_path, secure_job, INITIAL, KEY, now=0.0).view(0.0)
    plain = JobHost.create(tmp_path, host_job(job_id="el-p"), INITIAL, KEY, now=0.0).view(0.0)
    assert secure.secagg_protocol == PROTOCOL and plain.secagg_protocol == ""
    assert status_from_proto(status_to_proto(secure)) == secure
