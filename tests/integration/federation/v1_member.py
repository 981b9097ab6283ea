"""A member process of secure-aggregation protocol v1, for the protocol-mismatch test.

Run as ``python v1_member.py MEMBER NODE_DIR COORDINATOR_ADDRESS JOB_ID`` (a logreg
job of 6 features and 2 classes, coordinated by sunarc): this node's
``MemberRunner`` with the v1 wire protocol put back, exactly as v1 spoke it - 32-byte
mask seeds expanded with ChaCha20 (zero nonce), every signature under the domain
``qdspace-secagg-v1``, key adverts without a ``protocol`` field, and no check of the
protocol a coordinator announces (v1 had none). It prints each event and, at the end,
``contributed [...]``; a refusal that ends the run is printed and exits 3. (The runner's
loop is this version's, which stops at a ``wrong_protocol`` refusal; v1's loop went on
polling and had its advert refused the same way in every attempt.)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms

from qdspace.federation import logreg, secagg_masks, secagg_messages
from qdspace.federation.secagg_messages import KeyAdvert
from qdspace.node.identity.member import load_member_keys
from qdspace.node.rpc import federation_client, federation_runner, federation_serde
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient, FederationRefused, coordinator_key
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.runtime.federation_member import MemberEvent
from qdspace.protocols.v1 import federation_pb2 as pb

V1_DOMAIN = b"qdspace-secagg-v1"


def _chacha20(seed: bytes) -> CipherContext:
    return Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()


def _v1_advert(advert: KeyAdvert) -> pb.KeyAdvert:
    """The advert as a v1 node sends it: without the protocol field (v1 had none)."""
    message = federation_serde.advert_to_proto(advert)
    message.ClearField("protocol")
    return message


def speak_v1() -> None:
    secagg_masks.DOMAIN = secagg_messages.DOMAIN = V1_DOMAIN  # type: ignore[misc]
    secagg_masks.SEED_BYTES = 32  # type: ignore[misc]
    secagg_masks._keystream = _chacha20  # type: ignore[assignment]
    federation_client.advert_to_proto = _v1_advert  # type: ignore[assignment]
    federation_runner.protocol_mismatch = lambda who, protocol: None  # type: ignore[assignment]


async def main(member: str, node_dir: Path, address: str, job_id: str) -> int:
    keys = load_member_keys(node_dir)
    channel = open_channel(keys, address, "sunarc")
    data = logreg.make_blobs(300, 6, 2, seed=3)

    def show(event: MemberEvent) -> None:
        print(f"event {event.kind} round {event.round}: {event.detail}", flush=True)

    try:
        runner = MemberRunner(
            FederationClient(channel, "sunarc", job_id),
            member,
            logreg.trainer(data, epochs=1, lr=0.2),
            await coordinator_key(channel, "sunarc"),
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.ca_cert,
            on_event=show,
            poll_s=2.0,
        )
        result = await runner.run()
    except FederationRefused as exc:
        print(f"refused: {exc}", flush=True)
        return 3
    finally:
        await channel.close()
    print(f"contributed {result.contributed}", flush=True)
    return 0


if __name__ == "__main__":
    speak_v1()
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4])))
