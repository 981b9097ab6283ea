"""Differential privacy for federated rounds: clip, add Gaussian noise, count the cost.

Each member's update (its change from the global model) is clipped to L2 norm
``clip`` before it is masked, so one member can move the sum by at most ``clip``.
Gaussian noise with standard deviation ``noise_multiplier * clip`` is then added to
the sum, either by the aggregator (``central``) or split across members so that the
masked sum carries it without anyone seeing a noise-free update (``distributed``;
each member adds ``1/min_members`` of the variance).

The accountant is Rényi DP (Mironov 2017) of the sampled Gaussian mechanism
(Mironov, Talwar, Zhang 2019) at integer orders, composed over rounds and converted
to ``(epsilon, delta)`` with the bound of Canonne, Kamath and Steinke (2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from qdspace.federation.errors import PrivacyError
from qdspace.federation.json_reader import JsonReader
from qdspace.federation.params import Vector
from qdspace.federation.strategies import clip_to_norm

DEFAULT_ORDERS: tuple[float, ...] = (
    1.25,
    1.5,
    1.75,
    *[float(a) for a in range(2, 65)],
    80.0,
    96.0,
    128.0,
    192.0,
    256.0,
)


class NoiseMode(StrEnum):
    CENTRAL = "central"
    DISTRIBUTED = "distributed"


#: the modes a job's terms may give (`dp_fields`)
NOISE_MODES = tuple(m.value for m in NoiseMode)


@dataclass(frozen=True, slots=True)
class DPConfig:
    """A job's privacy settings, as named in its contract."""

    clip: float
    noise_multiplier: float
    delta: float = 1e-5
    mode: NoiseMode = NoiseMode.DISTRIBUTED
    max_epsilon: float | None = None
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.clip < math.inf:
            raise PrivacyError(f"DP clip must be a finite number > 0, got {self.clip}")
        if not 0 < self.noise_multiplier < math.inf:
            raise PrivacyError(
                f"DP noise multiplier must be a finite number > 0, got {self.noise_multiplier}"
            )
        if not 0 < self.delta < 1:
            raise PrivacyError(f"DP delta must be in (0, 1), got {self.delta}")
        if not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"DP sample rate must be in (0, 1], got {self.sample_rate}")
        if self.max_epsilon is not None and not 0 < self.max_epsilon < math.inf:
            raise PrivacyError(f"DP epsilon budget must be > 0, got {self.max_epsilon}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": float(self.clip),
            "noise_multiplier": float(self.noise_multiplier),
            "delta": float(self.delta),
            "mode": self.mode.value,
            "max_epsilon": None if self.max_epsilon is None else float(self.max_epsilon),
            "sample_rate": float(self.sample_rate),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "dp") -> DPConfig:
        """Settings as JSON gives them, read strictly (`dp_fields`): a value not of its
        JSON type is a ``PrivacyError`` naming it (``dp.clip``), never coerced
        (``"0.5"`` was a clip, ``1e400`` an infinite one, a list an ``AttributeError``)."""
        read = JsonReader()
        fields = dp_fields(read, where, data)
        if read.problems:
            raise PrivacyError(f"DP settings are not valid: {read.refusal()}")
        return cls(**fields)

    def member_noise_std(self, min_members: int) -> float:
        """Standard deviation each member adds in distributed mode (0 in central mode)."""
        if self.mode is NoiseMode.CENTRAL:
            return 0.0
        if min_members < 1:
            raise PrivacyError(f"distributed noise needs min_members >= 1, got {min_members}")
        return self.noise_multiplier * self.clip / math.sqrt(min_members)

    def central_noise_std(self) -> float:
        """Standard deviation the aggregator adds to the sum in central mode (else 0)."""
        return self.noise_multiplier * self.clip if self.mode is NoiseMode.CENTRAL else 0.0


def dp_fields(read: JsonReader, where: str, value: object) -> dict[str, Any]:
    """The fields of a `DPConfig` (its ``to_dict``), each checked by ``read`` under
    ``where``: ``clip`` and ``noise_multiplier`` finite numbers, ``delta``,
    ``sample_rate`` and ``max_epsilon`` (``null``: no budget) too when given, ``mode``
    one of `NoiseMode`. Job terms read theirs with the terms' own reader."""
    data = read.mapping(where, value)
    out: dict[str, Any] = {
        key: read.real(f"{where}.{key}", read.get(data, key))
        for key in ("clip", "noise_multiplier")
    }
    for key in ("delta", "sample_rate"):
        if key in data:
            out[key] = read.real(f"{where}.{key}", data[key])
    out["max_epsilon"] = read.maybe(read.real, f"{where}.max_epsilon", data.get("max_epsilon"))
    if "mode" in data:
        mode = read.choice(f"{where}.mode", data["mode"], NOISE_MODES)
        out["mode"] = NoiseMode.DISTRIBUTED if mode is None else NoiseMode(mode)
    return out


def clip_update(delta: Vector, clip: float) -> Vector:
    """Bound one member's change to L2 norm ``clip`` (before masking or noise)."""
    clipped, _ = clip_to_norm(np.asarray(delta, dtype=np.float32), clip)
    return clipped


def add_noise(vector: Vector, std: float, rng: np.random.Generator) -> Vector:
    """``vector`` plus i.i.d. Gaussian noise of standard deviation ``std`` per coordinate."""
    if std < 0:
        raise PrivacyError(f"noise standard deviation must be >= 0, got {std}")
    if std == 0:
        return vector
    noise = rng.standard_normal(vector.shape, dtype=np.float32) * np.float32(std)
    return (vector + noise).astype(np.float32)


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def rdp_sampled_gaussian(q: float, sigma: float, order: float) -> float:
    """RDP at ``order`` of one step of the Gaussian mechanism sampled with rate ``q``.

    For ``q == 1`` this is ``order / (2 sigma^2)``; otherwise the exact binomial
    expansion, which needs an integer order (``inf`` is returned for others).
    """
    if q == 1.0:
        return order / (2 * sigma**2)
    if order != int(order):
        return math.inf
    alpha = int(order)
    log_a = -math.inf
    for k in range(alpha + 1):
        term = (
            math.lgamma(alpha + 1)
            - math.lgamma(k + 1)
            - math.lgamma(alpha - k + 1)
            + (alpha - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * sigma**2)
        )
        log_a = _log_add(log_a, term)
    return log_a / (alpha - 1)


def rdp_to_epsilon(
    rdp: Sequence[float], orders: Sequence[float], delta: float
) -> tuple[float, float]:
    """Smallest ``epsilon`` over the orders for this ``delta``, and the order that gave it."""
    best, best_order = math.inf, math.nan
    for r, a in zip(rdp, orders, strict=True):
        if math.isinf(r) or a <= 1:
            continue
        eps = r + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best:
            best, best_order = eps, a
    return max(best, 0.0), best_order


@dataclass(frozen=True, slots=True)
class PrivacySpent:
    """What a job has spent so far; reported with every global model version."""

    epsilon: float
    delta: float
    rounds: int
    order: float


@dataclass(frozen=True, slots=True)
class Accountant:
    """The privacy cost of ``rounds`` rounds under one ``DPConfig`` (pure, recomputable)."""

    config: DPConfig
    orders: tuple[float, ...] = DEFAULT_ORDERS

    def spent(self, rounds: int) -> PrivacySpent:
        if rounds < 0:
            raise PrivacyError(f"rounds must be >= 0, got {rounds}")
        if rounds == 0:
            return PrivacySpent(0.0, self.config.delta, 0, math.nan)
        q, sigma = self.config.sample_rate, self.config.noise_multiplier
        rdp = [rounds * rdp_sampled_gaussian(q, sigma, a) for a in self.orders]
        eps, order = rdp_to_epsilon(rdp, self.orders, self.config.delta)
        return PrivacySpent(eps, self.config.delta, rounds, order)

    def check_budget(self, rounds: int) -> PrivacySpent:
        """The cost of ``rounds``; ``PrivacyError`` if it exceeds the job's epsilon budget."""
        spent = self.spent(rounds)
        budget = self.config.max_epsilon
        if budget is not None and spent.epsilon > budget:
            raise PrivacyError(
                f"{rounds} rounds would spend epsilon {spent.epsilon:.3f} "
                f"(delta {spent.delta:g}), over the job's budget {budget:g}"
            )
        return spent


def noise_for_budget(epsilon: float, delta: float, rounds: int, sample_rate: float = 1.0) -> float:
    """The smallest noise multiplier (to 1e-3) that keeps ``rounds`` rounds within budget."""
    if not epsilon > 0 or rounds < 1:
        raise PrivacyError(f"need epsilon > 0 and rounds >= 1, got {epsilon}, {rounds}")

    def eps_of(sigma: float) -> float:
        cfg = DPConfig(clip=1.0, noise_multiplier=sigma, delta=delta, sample_rate=sample_rate)
        return Accountant(cfg).spent(rounds).epsilon

    lo, hi = 1e-3, 1.0
    while eps_of(hi) > epsilon:
        hi *= 2
        if hi > 1e6:
            raise PrivacyError(f"no noise level reaches epsilon {epsilon}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if eps_of(mid) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi
