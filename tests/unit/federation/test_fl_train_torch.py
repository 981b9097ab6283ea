"""Local PyTorch training: learns, FedProx pulls towards the global model, shapes are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qdspace.federation import logreg
from qdspace.federation.errors import TrainingError
from qdspace.federation.params import flatten
from qdspace.federation.train_torch import LocalConfig, get_params, set_params, train_local

DATA = logreg.make_blobs(400, 8, 3, seed=3, spread=1.0)
INPUTS = torch.from_numpy(DATA.x)
LABELS = torch.from_numpy(DATA.y)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def accuracy(net: torch.nn.Module) -> float:
    with torch.no_grad():
        return float((net(INPUTS).argmax(1) == LABELS).float().mean())


def test_local_training_learns_from_the_global_parameters() -> None:
    net = model()
    start = get_params(net)
    before = accuracy(net)
    params, n = train_local(net, start, INPUTS, LABELS, LocalConfig(epochs=5, learning_rate=0.1))
    assert n == 400
    set_params(net, params)
    assert accuracy(net) > max(before + 0.2, 0.8)
    assert [p.shape for p in params] == [p.shape for p in start]


def test_fedprox_term_keeps_the_local_model_near_the_global_one() -> None:
    start = get_params(model())
    moved = {}
    for mu in (0.0, 5.0):
        params, _ = train_local(model(), start, INPUTS, LABELS, LocalConfig(epochs=3, mu=mu))
        moved[mu] = float(np.linalg.norm(flatten(params) - flatten(start)))
    assert moved[5.0] < 0.7 * moved[0.0]


def test_parameters_that_do_not_fit_are_refused() -> None:
    net = model()
    params = get_params(net)
    with pytest.raises(TrainingError, match="do not fit"):
        set_params(net, params[:-1])
    with pytest.raises(TrainingError, match="empty"):
        train_local(net, params, INPUTS[:0], LABELS[:0], LocalConfig())


def test_a_member_trains_on_no_more_threads_than_its_cpus_whatever_the_terms_ask() -> None:
    """The coordinator writes ``threads`` (up to 64); PyTorch's count is the process's: a
    member took all 64 on a 2-core machine (or a managed host's shared one)."""
    import os

    cpus = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        net = model()
        train_local(net, get_params(net), INPUTS, LABELS, LocalConfig(threads=64))
        assert torch.get_num_threads() == min(64, cpus)
        train_local(net, get_params(net), INPUTS, LABELS, LocalConfig(threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
