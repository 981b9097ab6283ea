"""Differential privacy: clipping, noise and the (epsilon, delta) accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdspace.federation.dp import (
    Accountant,
    DPConfig,
    NoiseMode,
    add_noise,
    clip_update,
    noise_for_budget,
    rdp_sampled_gaussian,
)
from qdspace.federation.errors import PrivacyError


def test_clipping_bounds_the_norm_and_keeps_short_updates() -> None:
    long = np.full(100, 1.0, np.float32)
    assert np.linalg.norm(clip_update(long, 2.0)) == pytest.approx(2.0, rel=1e-6)
    short = np.full(4, 0.1, np.float32)
    np.testing.assert_array_equal(clip_update(short, 2.0), short)


def test_distributed_noise_sums_to_the_central_level() -> None:
    cfg = DPConfig(clip=0.5, noise_multiplier=1.2, mode=NoiseMode.DISTRIBUTED)
    members = 4
    std = cfg.member_noise_std(min_members=members)
    rng = np.random.default_rng(0)
    total = sum(add_noise(np.zeros(200_000, np.float32), std, rng) for _ in range(members))
    assert float(np.std(total)) == pytest.approx(1.2 * 0.5, rel=0.01)
    assert cfg.central_noise_std() == 0.0
    central = DPConfig(clip=0.5, noise_multiplier=1.2, mode=NoiseMode.CENTRAL)
    assert central.central_noise_std() == pytest.approx(0.6)
    assert central.member_noise_std(4) == 0.0


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def exact_gaussian_delta(eps: float, mu: float) -> float:
    """Tight delta(eps) of a Gaussian mechanism with sensitivity/std ``mu`` (Balle & Wang)."""
    return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (1.1, 50), (4.0, 200), (0.8, 10)])
def test_full_participation_epsilon_is_a_valid_and_tight_bound(sigma: float, rounds: int) -> None:
    cfg = DPConfig(clip=1.0, noise_multiplier=sigma, delta=1e-5)
    spent = Accountant(cfg).spent(rounds)
    mu = math.sqrt(rounds) / sigma  # T-fold Gaussian composition is Gaussian with this mu
    # Valid: at our epsilon the exact delta is no larger than claimed.
    assert exact_gaussian_delta(spent.epsilon, mu) <= 1e-5
    # Tight enough: the exact epsilon for delta=1e-5 is not far below ours.
    lo, hi = 0.0, spent.epsilon
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_gaussian_delta(mid, mu) > 1e-5 else (lo, mid)
    assert spent.epsilon <= 1.35 * hi + 0.05


@pytest.mark.parametrize(("q", "sigma", "order"), [(0.1, 1.0, 4), (0.01, 0.8, 16), (0.5, 2.0, 8)])
def test_sampled_gaussian_rdp_matches_numerical_integration(
    q: float, sigma: float, order: int
) -> None:
    z = np.linspace(-40 * sigma, 40 * sigma + 1, 400_001)
    # E_{z ~ N(0, s^2)} [(mu1(z) / mu0(z)) ** order], mu1 = (1-q) N(0, s^2) + q N(1, s^2)
    ratio = (1 - q) + q * np.exp((2 * z - 1) / (2 * sigma**2))
    log_density = -(z**2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
    integrand = np.exp(log_density + order * np.log(ratio))
    a = float(np.sum(integrand) * (z[1] - z[0]))
    assert rdp_sampled_gaussian(q, sigma, order) == pytest.approx(
        math.log(a) / (order - 1), rel=1e-4
    )
    assert rdp_sampled_gaussian(q, sigma, 2.5) == math.inf


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling() -> None:
    base = DPConfig(clip=1.0, noise_multiplier=1.0)
    eps = [Accountant(base).spent(r).epsilon for r in (1, 5, 25)]
    assert eps[0] < eps[1] < eps[2]
    noisier = DPConfig(clip=1.0, noise_multiplier=2.0)
    assert Accountant(noisier).spent(5).epsilon < eps[1]
    sampled = DPConfig(clip=1.0, noise_multiplier=1.0, sample_rate=0.1)
    assert Accountant(sampled).spent(5).epsilon < eps[1]
    assert Accountant(base).spent(0).epsilon == 0.0


def test_budget_is_enforced_and_inverse_finds_the_noise() -> None:
    cfg = DPConfig(clip=1.0, noise_multiplier=1.0, max_epsilon=6.0)
    assert Accountant(cfg).check_budget(1).epsilon < 6.0
    with pytest.raises(PrivacyError, match="over the job's budget 6"):
        Accountant(cfg).check_budget(100)
    sigma = noise_for_budget(2.0, 1e-5, rounds=20)
    at = Accountant(DPConfig(clip=1.0, noise_multiplier=sigma)).spent(20).epsilon
    assert 1.95 < at <= 2.0


def test_config_round_trip_and_validation() -> None:
    cfg = DPConfig(
        clip=0.3, noise_multiplier=0.9, delta=1e-6, mode=NoiseMode.CENTRAL, max_epsilon=8
    )
    assert DPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PrivacyError, match="clip"):
        DPConfig(clip=0.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="delta"):
        DPConfig(clip=1.0, noise_multiplier=1.0, delta=1.5)
    with pytest.raises(PrivacyError, match="not valid"):
        DPConfig.from_dict({"clip": 1.0})
