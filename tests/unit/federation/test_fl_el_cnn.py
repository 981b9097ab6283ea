"""The ``el-cnn`` job model: the line's CNN, its parameter layout, terms and member files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qdspace.federation.el_cnn import (
    LAYOUT,
    MODEL,
    cnn_shapes,
    job_problems,
    load_images,
    widths_of,
)
from qdspace.federation.errors import TrainingError
from qdspace.federation.models import job_problems as model_job_problems
from qdspace.federation.models import model_kind

torch = pytest.importorskip("torch")

TERMS = {"layout": float(LAYOUT), "image_size": 16.0, "epochs": 1.0, "lr": 3e-3}
WIDTHS = (4, 8, 8)


def _cnn(widths: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    from qdspace.inference.training import ElCnn

    return ElCnn(2, widths)


@pytest.mark.parametrize("widths", [(16, 32, 64), (4, 8, 8), (3, 5, 6)])
def test_layout_1_is_the_served_networks_state_dict_order(widths: tuple[int, int, int]) -> None:
    state = _cnn(widths).state_dict()
    assert tuple(tuple(t.shape) for t in state.values()) == cnn_shapes(widths)
    assert widths_of(cnn_shapes(widths)) == widths
    # group norm: no running statistics, the parameters are the whole state
    assert not any("running" in name for name in state)
    assert len(state) == len(list(_cnn(widths).parameters()))


def test_shapes_of_other_networks_are_refused() -> None:
    shapes = cnn_shapes(WIDTHS)
    with pytest.raises(TrainingError, match="not an el-cnn network"):
        widths_of(((3, 4), (4,)))
    with pytest.raises(TrainingError, match="not an el-cnn network"):
        widths_of((*shapes[:-1], (3,)))  # three classes
    with pytest.raises(TrainingError, match="not an el-cnn network"):
        widths_of((*shapes[:5], (9, 4, 3, 3), *shapes[6:]))
    assert job_problems(shapes, TERMS) == []
    assert model_job_problems("logreg", shapes, {}) == []
    assert model_job_problems("el-transformer", shapes, {}) == []  # members judge those


@pytest.mark.parametrize(
    ("terms", "what"),
    [
        ({"image_size": 16.0}, "layout None"),
        ({**TERMS, "layout": 2.0}, "layout 2.0"),
        ({"layout": 1.0}, "image_size"),
        ({**TERMS, "image_size": 16.5}, "image_size"),
        ({**TERMS, "image_size": 4096.0}, "image_size"),
        ({**TERMS, "epochs": 0.0}, "epochs"),
        ({**TERMS, "lr": 0.0}, "lr"),
        ({**TERMS, "batch": 1e9}, "batch"),
        ({**TERMS, "threads": 1000.0}, "threads"),
    ],
)
def test_terms_that_do_not_fit_are_named(terms: dict[str, float], what: str) -> None:
    problems = job_problems(cnn_shapes(WIDTHS), terms)
    assert any(what in p for p in problems), problems


def test_member_files_are_read_as_served_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "own.npz"
    images = rng.integers(0, 255, (6, 30, 30), dtype=np.uint8)
    np.savez(path, images=images, y=np.array([0, 1, 0, 1, 1, 0]))
    data = load_images(path, cnn_shapes(WIDTHS), TERMS)
    assert data.x.shape == (6, 1, 16, 16) and data.x.dtype == np.float32
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    for name, content, what in (
        ("float.npz", {"images": images.astype(np.float32), "y": np.zeros(6)}, "uint8"),
        ("labels.npz", {"images": images, "y": np.full(6, 2)}, "labels must be in 0..1"),
        ("flat.npz", {"images": images[0], "y": np.zeros(30)}, "needs"),
        ("nothing.npz", {"x": images}, "images and y"),
    ):
        np.savez(tmp_path / name, **content)
        with pytest.raises(TrainingError, match=what):
            load_images(tmp_path / name, cnn_shapes(WIDTHS), TERMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_round_trains_the_cnn_deterministically_and_proximally(tmp_path: Path, seed: int) -> None:
    from qdspace.inference.training import TrainConfig, build_model, get_weights

    rng = np.random.default_rng(1)
    images = rng.integers(120, 200, (40, 16, 16), dtype=np.uint8)
    y = (np.arange(40) % 2).astype(np.int64)
    images[y == 1, 8, :] = 10  # a dark crack line on the defective cells
    np.savez(tmp_path / "own.npz", images=images, y=y)
    kind = model_kind(MODEL)
    data = kind.load(tmp_path / "own.npz", cnn_shapes(WIDTHS), TERMS)
    start = get_weights(build_model(TrainConfig(seed=seed, widths=WIDTHS)))
    train = kind.trainer({**TERMS, "epochs": 8.0, "seed": float(seed)}, data, 0.0)
    first, count = train(start, 1)
    again, _ = train(start, 1)
    other, _ = train(start, 2)
    assert count == 40
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    moved = sum(float(np.sum((a - b) ** 2)) for a, b in zip(first, start, strict=True))
    held, _ = kind.trainer({**TERMS, "epochs": 8.0, "seed": float(seed)}, data, 100.0)(start, 1)
    near = sum(float(np.sum((a - b) ** 2)) for a, b in zip(held, start, strict=True))
    assert near < moved  # FedProx's term keeps the weights closer to the global ones
    assert kind.accuracy(first, data) > 0.8
    assert kind.defect_scores is not None and kind.defect_scores(first, data).shape == (40,)


def test_a_secure_cnn_round_refuses_a_masked_input_of_the_wrong_length() -> None:
    """The CNN's vector goes through secure aggregation like any model's: a member's
    masked input must have the job's length; the honest sum still unmasks to the mean."""
    import dataclasses

    from nacl.signing import SigningKey

    from qdspace.federation.errors import RefusalReason, UpdateRefused
    from qdspace.federation.job import JobSpec
    from qdspace.federation.member import prepare_change, secagg_client
    from qdspace.federation.params import size_of
    from qdspace.federation.rounds import Coordinator

    members = ("cellex", "polycell", "sunarc")
    shapes = cnn_shapes(WIDTHS)
    job = JobSpec(
        job_id="cnn-secure",
        coordinator="sunarc",
        model=MODEL,
        shapes=shapes,
        rounds=1,
        min_members=3,
        members=members,
        secure_aggregation=True,
        threshold=2,
        update_clip=5.0,
        training=TERMS,
    )
    rng = np.random.default_rng(0)
    start = rng.normal(0, 0.1, size_of(shapes)).astype(np.float32)
    coord = Coordinator.start(job, start, now=0.0, seed=0)
    signing = {m: SigningKey.generate() for m in members}
    verify = {m: k.verify_key for m, k in signing.items()}
    att = coord.attempt
    clients = {m: secagg_client(job, m, 1, att, signing[m]) for m in members}
    for m, c in clients.items():
        coord.submit_advert(m, 1, att, c.advertise(), verify[m], 1.0)
    for m, c in clients.items():
        coord.submit_shares(m, 1, att, c.share_keys(coord.roster(m, 1, att), verify), 1.0)
    changes = {m: rng.normal(0, 0.01, start.size).astype(np.float32) for m in members}
    masked = {
        m: c.mask(prepare_change(job, start, start + changes[m], rng), coord.inbox(m, 1, att))
        for m, c in clients.items()
    }
    short = dataclasses.replace(masked["cellex"], vector=masked["cellex"].vector[:-1])
    with pytest.raises(UpdateRefused) as refused:
        coord.submit_masked("cellex", 1, att, short, 1.0)
    assert refused.value.reason is RefusalReason.WRONG_SHAPE
    for m in members:
        coord.submit_masked(m, 1, att, masked[m], 1.0)
    split = coord.unmask_request("cellex", 1, att)
    for m in split.survivors:
        coord.submit_confirmation(m, 1, att, clients[m].confirm(split), 1.0)
    request = coord.unmask_request("cellex", 1, att)
    for m in request.survivors:
        coord.submit_unmask(m, 1, att, clients[m].unmask(request), 1.0)
    assert coord.phase.value == "done"
    mean = np.mean([changes[m] for m in members], axis=0)
    assert np.abs(coord.global_vector - (start + mean)).max() < 1e-5
