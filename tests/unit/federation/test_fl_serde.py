"""Federation wire conversions round-trip (``node.rpc.federation_serde``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.federation.errors import FederationError, RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.round_status import MAX_WAIT_S, Phase, RoundRecord, StatusView, poll_wait
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    SignedShare,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.node.rpc.federation_serde import (
    advert_from_proto,
    advert_to_proto,
    confirmation_from_proto,
    confirmation_to_proto,
    decode_model_chunk,
    decode_upload_chunk,
    encode_data_chunk,
    serialize,
    share_to_proto,
    shares_from_proto,
    status_from_proto,
    status_to_proto,
    unmask_from_proto,
    unmask_request_from_proto,
    unmask_request_to_proto,
    unmask_to_proto,
)
from qdspace.protocols.v1 import federation_pb2 as pb

names = st.text("abcdefghij", min_size=1, max_size=8)
records = st.builds(
    RoundRecord,
    round=st.integers(1, 1000),
    version=st.integers(1, 1000),
    members=st.lists(names, max_size=4).map(tuple),
    bounded=st.lists(names, max_size=2).map(tuple),
    epsilon=st.none() | st.floats(0.01, 100.0),
)


@settings(max_examples=40, deadline=None)
@given(
    round_=st.integers(0, 10**6),
    phase=st.sampled_from(list(Phase)),
    history=st.lists(records, max_size=4).map(tuple),
    delta=st.none() | st.floats(1e-9, 0.5),
    deadline=st.floats(0.0, 86_400.0),
)
def test_status_round_trips(
    round_: int,
    phase: Phase,
    history: tuple[RoundRecord, ...],
    delta: float | None,
    deadline: float,
) -> None:
    view = StatusView(
        "el-1", round_, 2, phase, deadline, 7, "detail", 9, history, b"\x01" * 32, delta
    )
    assert status_from_proto(status_to_proto(view)) == view


@settings(max_examples=20, deadline=None)
@given(member=names, keys=st.lists(st.binary(min_size=32, max_size=32), min_size=4, max_size=4))
def test_secagg_messages_round_trip(member: str, keys: list[bytes]) -> None:
    advert = KeyAdvert(member, keys[0], keys[1], keys[2], keys[3] + keys[3], keys[1])
    assert advert_from_proto(advert_to_proto(advert)) == advert
    share = EncryptedShare(member, member + "x", keys[0])
    assert shares_from_proto([share_to_proto(share)]) == [share]
    confirmation = Confirmation(member, keys[3] + keys[2])
    assert confirmation_from_proto(confirmation_to_proto(confirmation)) == confirmation
    request = UnmaskRequest((member, "z"), ("y",), (confirmation,))
    assert unmask_request_from_proto(unmask_request_to_proto(request)) == request
    response = UnmaskResponse(
        member,
        {member: SignedShare(keys[1], keys[0] + keys[1])},
        {"y": SignedShare(keys[2], keys[2] + keys[3])},
    )
    assert unmask_from_proto(unmask_to_proto(response, pb.RoundRef(job_id="j"))) == response


@pytest.mark.parametrize(
    "field,value",
    [
        ("deadline_in_s", float("nan")),
        ("deadline_in_s", -1.0),
        ("deadline_in_s", 1e300),
        ("delta", float("inf")),
        ("delta", 2.0),
    ],
)
def test_a_status_with_numbers_out_of_range_is_refused(field: str, value: float) -> None:
    wire = status_to_proto(StatusView("el-1", 1, 1, Phase.TRAINING, 1.0, 0, "", 1, (), b""))
    setattr(wire, field, value)
    with pytest.raises(UpdateRefused) as exc:
        status_from_proto(wire)
    assert exc.value.reason is RefusalReason.OUT_OF_RANGE


def test_poll_wait_refuses_nan_and_negative_and_caps_huge() -> None:
    for bad in (float("nan"), -0.5, float("inf"), float("-inf")):
        with pytest.raises(UpdateRefused, match="wait_s"):
            poll_wait(bad)
    assert poll_wait(1e12) == MAX_WAIT_S
    assert poll_wait(0.0) == 0.0 and poll_wait(2.5) == 2.5


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_384, 300_000])
def test_raw_data_chunks_are_protobuf_chunks(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = encode_data_chunk(memoryview(data))
    assert wire == pb.UploadChunk(data=data).SerializeToString()
    assert wire == pb.ModelChunk(data=data).SerializeToString()
    header, view = decode_upload_chunk(wire)
    assert header is None and bytes(view) == data
    header, view = decode_model_chunk(wire)
    assert header is None and bytes(view) == data


def test_headers_and_unusual_encodings_go_through_the_parser() -> None:
    wire = pb.UploadChunk(header=pb.UploadHeader(job_id="el", round=3)).SerializeToString()
    header, data = decode_upload_chunk(wire)
    assert header is not None and header.round == 3 and data == b""
    model = pb.ModelChunk(header=pb.ModelHeader(total_bytes=9)).SerializeToString()
    model_header, _ = decode_model_chunk(model)
    assert model_header is not None and model_header.total_bytes == 9
    # a data chunk followed by an unknown field: parsed, not taken as raw bytes
    padded = encode_data_chunk(b"abc") + b"\x18\x01"
    header, data = decode_upload_chunk(padded)
    assert header is None and bytes(data) == b"abc"
    assert serialize(b"raw") == b"raw"
    assert serialize(pb.JobRef(job_id="x")) == pb.JobRef(job_id="x").SerializeToString()


@pytest.mark.parametrize(
    "change",
    [
        {"phase_timeout_s": float("nan")},
        {"phase_timeout_s": 1e12},
        {"update_clip": float("inf")},
        {"training": {"lr": float("nan")}},
        {"dp": {"clip": float("inf"), "noise_multiplier": 1.0, "delta": 1e-5}},
        {"dp": {"clip": 1.0, "noise_multiplier": float("inf"), "delta": 1e-5}},
    ],
)
def test_job_terms_from_a_peer_with_numbers_out_of_range_are_refused(
    change: dict[str, object],
) -> None:
    terms = {
        "job_id": "el-1",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": [[2, 2]],
        "rounds": 1,
        "min_members": 1,
        "members": ["cellex"],
    }
    with pytest.raises(FederationError):
        JobSpec.from_dict(terms | change)
