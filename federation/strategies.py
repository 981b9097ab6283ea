"""Aggregation strategies: how member updates become the next global model.

Every strategy takes the current global vector and the members' trained vectors
(flat float32, see ``federation.params``) and returns the next global vector with
a short account of what it did (which members it used, whose update it bounded).
They are plain numpy functions, so they are tested without sockets.

- ``FedAvg`` (McMahan et al. 2017): mean weighted by examples.
- ``FedProx`` (Li et al. 2020): FedAvg on the server; members add the proximal term
  ``mu/2 * ||w - w_global||^2`` to their local loss (``proximal_gradient``).
- ``Median`` and ``TrimmedMean`` (Yin et al. 2018): coordinate-wise, unweighted.
- ``Krum`` / multi-Krum (Blanchard et al. 2017): pick the update(s) closest to their
  ``n - f - 2`` nearest neighbours.
- ``NormBounding`` (Sun et al. 2019): clip each update's change to an L2 bound, then
  average. Under secure aggregation the members clip before masking and the aggregator
  only needs the sum, so honest members are bounded as in plain rounds; a hostile member
  is not: the coordinator never sees its update, and nothing checks the clip on a
  masked input (that needs a norm proof, as in RoFL or EIFFeL), so one member can move
  each coordinate by up to about 2 * n * clip. Plain rounds bound every member.

Robust strategies ignore ``num_examples`` on purpose: a poisoned member could claim
any number of examples to buy itself weight (the mean ones weigh by it only where the
job's terms bound the claim: ``JobSpec.aggregator``).

No strategy returns a model with an infinite or NaN value: one would be signed and
published, and no member could train from it again. Changes are measured in float64
where float32 overflows (``bounded_change``), and an aggregate that is still not finite
(a model already near float32's limit pushed past it) raises ``AggregateNotFinite``,
which ends the round's attempt with that reason instead of publishing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import SecAggAbort, StrategyError
from qdspace.federation.json_reader import JsonReader
from qdspace.federation.params import Vector


class StrategyName(StrEnum):
    """The strategies a job can name in its contract."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    NORM_BOUNDING = "norm_bounding"


#: Strategies whose result is a function of the sum of updates only: they work with
#: secure aggregation (the aggregator never sees a single update).
SUM_BASED = frozenset({StrategyName.FEDAVG, StrategyName.FEDPROX, StrategyName.NORM_BOUNDING})
#: the names a job's terms may give (`strategy_fields`)
STRATEGY_NAMES = tuple(n.value for n in StrategyName)


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """One member's trained parameters for one round, flattened."""

    member: str
    vector: Vector
    num_examples: int

    def __post_init__(self) -> None:
        if self.num_examples < 0:
            raise StrategyError(f"member {self.member} reports {self.num_examples} examples")


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The next global vector and what the strategy did to get it."""

    vector: Vector
    used: tuple[str, ...]
    bounded: tuple[str, ...] = ()


class Strategy(Protocol):
    """What the round loop calls; ``min_updates`` is the fewest updates it can work with."""

    @property
    def min_updates(self) -> int: ...

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate: ...


def _check(global_vector: Vector, updates: Sequence[ClientUpdate], need: int) -> None:
    if len(updates) < need:
        raise StrategyError(f"strategy needs at least {need} updates, got {len(updates)}")
    members = [u.member for u in updates]
    if len(set(members)) != len(members):
        raise StrategyError(f"more than one update from the same member in {sorted(members)}")
    for u in updates:
        if u.vector.shape != global_vector.shape:
            raise StrategyError(
                f"member {u.member} update has shape {u.vector.shape}, "
                f"global model has {global_vector.shape}"
            )


def _stack(global_vector: Vector, updates: Sequence[ClientUpdate], need: int) -> NDArray[Any]:
    _check(global_vector, updates, need)
    return np.stack([np.asarray(u.vector, dtype=np.float32) for u in updates])


def _names(updates: Sequence[ClientUpdate]) -> tuple[str, ...]:
    return tuple(u.member for u in updates)


class AggregateNotFinite(SecAggAbort):
    """A round's aggregate has an infinite or NaN value, so it is not published.

    A ``SecAggAbort`` because that is what ``Coordinator._close`` turns into the end of
    the attempt (the reason in the round's detail, a fresh attempt, the job failed after
    ``max_attempts``): any other error escaping a closing would be raised to whichever
    call closed it, and the round would never close."""


def finite_aggregate(vector: Vector, what: str) -> Vector:
    """``vector`` if every value is finite; else ``AggregateNotFinite`` naming ``what``."""
    if not np.isfinite(vector).all():
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        raise AggregateNotFinite(
            f"the {what} aggregate has {bad} infinite or NaN values (the global model is near "
            "float32's limit and the round's step pushed it past): not published"
        )
    return vector


@dataclass(frozen=True, slots=True)
class FedAvg:
    """Mean of the members' parameters, weighted by their number of examples."""

    weighted: bool = True

    @property
    def min_updates(self) -> int:
        return 1

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        _check(global_vector, updates, self.min_updates)
        weights = np.array([u.num_examples for u in updates], dtype=np.float64)
        if not self.weighted or weights.sum() <= 0:
            weights = np.ones(len(updates), dtype=np.float64)
        weights /= weights.sum()
        # One update at a time into one float32 buffer: no (n x d) stack and no float64
        # copies of 50 MB models (the rounding error stays ~1e-7 relative).
        with np.errstate(over="ignore", invalid="ignore"):  # seen below, not warned about
            total = np.multiply(updates[0].vector, np.float32(weights[0]), dtype=np.float32)
            for w, u in zip(weights[1:], updates[1:], strict=True):
                total += np.float32(w) * u.vector
            overflowed = not math.isfinite(float(total.sum(dtype=np.float64)))
        if overflowed:
            total = _wide_mean(weights, updates)
        return Aggregate(finite_aggregate(total, "fedavg"), _names(updates))


def _wide_mean(weights: NDArray[np.float64], updates: Sequence[ClientUpdate]) -> Vector:
    """The weighted mean in float64, for when float32 overflowed: members' values near
    float32's limit (finite, so accepted unclipped) and float32 weights that round up
    summed past it, and the coordinator published and signed a model of infinities,
    which no member could train from again. The mean of finite values is within their
    range, so it is finite in float32 too."""
    wide = np.zeros(updates[0].vector.shape, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite input: refused after
        for w, u in zip(weights, updates, strict=True):
            wide += np.asarray(u.vector, dtype=np.float64) * float(w)
        return wide.astype(np.float32)


@dataclass(frozen=True, slots=True)
class FedProx:
    """FedAvg on the server; ``mu`` is the members' proximal coefficient (job setting)."""

    mu: float = 0.01
    weighted: bool = True

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise StrategyError(f"FedProx mu must be >= 0, got {self.mu}")

    @property
    def min_updates(self) -> int:
        return 1

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        return FedAvg(weighted=self.weighted).aggregate(global_vector, updates)


def proximal_term(local: Vector, global_vector: Vector, mu: float) -> float:
    """FedProx's penalty ``mu/2 * ||w - w_global||^2`` added to a member's local loss."""
    diff = np.asarray(local, dtype=np.float64) - global_vector
    return 0.5 * mu * float(diff @ diff)


def proximal_gradient(local: Vector, global_vector: Vector, mu: float) -> Vector:
    """Gradient of ``proximal_term`` with respect to the local parameters."""
    return (mu * (np.asarray(local, dtype=np.float32) - global_vector)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Median:
    """Coordinate-wise median: each coordinate survives fewer than half the members lying."""

    @property
    def min_updates(self) -> int:
        return 1

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        stack = _stack(global_vector, updates, self.min_updates)
        median = np.median(stack, axis=0).astype(np.float32)
        return Aggregate(finite_aggregate(median, "median"), _names(updates))


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Coordinate-wise mean after dropping the ``trim`` fraction largest and smallest values."""

    trim: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.trim < 0.5:
            raise StrategyError(f"trimmed-mean fraction must be in [0, 0.5), got {self.trim}")

    @property
    def min_updates(self) -> int:
        return 1

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        stack = _stack(global_vector, updates, self.min_updates)
        k = int(np.floor(self.trim * len(updates)))
        ordered = np.sort(stack, axis=0)
        kept = ordered[k : len(updates) - k]
        mean = kept.mean(axis=0, dtype=np.float64).astype(np.float32)
        return Aggregate(finite_aggregate(mean, "trimmed mean"), _names(updates))


def krum_scores(stack: NDArray[Any], byzantine: int) -> NDArray[np.float64]:
    """Krum score of each row: sum of squared distances to its ``n - f - 2`` nearest rows."""
    n = stack.shape[0]
    rows = stack.astype(np.float64)
    norms = np.einsum("ij,ij->i", rows, rows)
    dist = norms[:, None] + norms[None, :] - 2.0 * (rows @ rows.T)
    np.maximum(dist, 0.0, out=dist)
    neighbours = n - byzantine - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


@dataclass(frozen=True, slots=True)
class Krum:
    """(Multi-)Krum: average the ``select`` updates with the lowest Krum scores.

    ``byzantine`` (f) is how many poisoned members the job tolerates; Krum needs
    ``n >= 2f + 3``. ``select=1`` is Krum, a larger value multi-Krum.
    """

    byzantine: int = 1
    select: int = 1

    def __post_init__(self) -> None:
        if self.byzantine < 0 or self.select < 1:
            raise StrategyError(
                f"Krum needs byzantine >= 0 and select >= 1, got {self.byzantine}, {self.select}"
            )

    @property
    def min_updates(self) -> int:
        return max(2 * self.byzantine + 3, self.select)

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        stack = _stack(global_vector, updates, self.min_updates)
        scores = krum_scores(stack, self.byzantine)
        chosen = np.argsort(scores, kind="stable")[: self.select]
        mean = stack[chosen].mean(axis=0, dtype=np.float64).astype(np.float32)
        chosen_members = tuple(updates[int(i)].member for i in chosen)
        return Aggregate(finite_aggregate(mean, "krum"), chosen_members)


def l2_norm(flat: NDArray[Any]) -> float:
    """The L2 norm of a flat vector, in one float32 pass; if the squares overflow float32
    (a hostile 1e30 change), measured again in float64, so a clip keeps the change's
    direction instead of scaling it by ``bound / inf``."""
    with np.errstate(over="ignore"):  # an overflow is seen below, not warned about
        norm = math.sqrt(float(np.dot(flat, flat)))
    if math.isinf(norm):
        norm = float(np.linalg.norm(np.asarray(flat, dtype=np.float64)))
    return norm


def clip_to_norm(delta: Vector, bound: float) -> tuple[Vector, bool]:
    """Scale ``delta`` down to L2 norm ``bound`` if it is longer; say whether it was."""
    flat = np.asarray(delta, dtype=np.float32).ravel()
    norm = l2_norm(flat)
    if norm <= bound:
        return delta, False
    return (delta * np.float32(bound / norm)).astype(np.float32, copy=False), True


def bounded_change(vector: Vector, base: Vector, bound: float) -> tuple[Vector, bool]:
    """``vector - base`` (a fresh float32 array), scaled down to L2 norm ``bound`` if it
    is longer; whether it was. A change past float32's range (a model near -3e38, an
    update near 3e38) overflowed to ``inf``, and ``inf * (bound / inf)`` made NaN:
    it is scaled in float64 then, keeping its direction."""
    with np.errstate(over="ignore"):  # a change past float32's range: see below
        change = np.subtract(vector, base, dtype=np.float32)
    norm = l2_norm(change)
    if norm <= bound:
        return change, False
    if math.isinf(norm):  # the difference itself overflowed: scale it in float64
        wide = np.subtract(vector, base, dtype=np.float64)
        return (wide * (bound / float(np.linalg.norm(wide)))).astype(np.float32), True
    np.multiply(change, np.float32(bound / norm), out=change)
    return change, True


def clip_in_place(delta: Vector, bound: float) -> bool:
    """``clip_to_norm`` into ``delta``'s own memory (a float32 array the caller owns): the
    same values, without a 50 MB temporary; says whether it scaled."""
    norm = l2_norm(delta.ravel())
    if norm <= bound:
        return False
    np.multiply(delta, np.float32(bound / norm), out=delta)
    return True


@dataclass(frozen=True, slots=True)
class NormBounding:
    """Bound each update's change from the global model to L2 norm ``bound``, then average."""

    bound: float = 1.0
    weighted: bool = False

    def __post_init__(self) -> None:
        if not self.bound > 0:
            raise StrategyError(f"norm bound must be > 0, got {self.bound}")

    @property
    def min_updates(self) -> int:
        return 1

    def aggregate(self, global_vector: Vector, updates: Sequence[ClientUpdate]) -> Aggregate:
        _check(global_vector, updates, self.min_updates)
        bounded: list[str] = []
        clipped_updates = []
        for u in updates:
            change, was = bounded_change(u.vector, global_vector, self.bound)
            if was:
                bounded.append(u.member)
            with np.errstate(over="ignore"):  # past float32's limit: FedAvg refuses it
                np.add(change, global_vector, out=change)
            clipped_updates.append(ClientUpdate(u.member, change, u.num_examples))
        avg = FedAvg(weighted=self.weighted).aggregate(global_vector, clipped_updates)
        return Aggregate(avg.vector, avg.used, tuple(bounded))


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A strategy as a job contract names it: a name and its few numeric settings."""

    name: StrategyName = StrategyName.FEDAVG
    params: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        params = {k: float(v) for k, v in sorted(self.params.items())}
        return {"name": self.name.value, "params": params}

    @classmethod
    def from_dict(cls, data: object, where: str = "strategy") -> StrategySpec:
        """A strategy as JSON gives it, read strictly (`strategy_fields`): a value not of
        its JSON type is a ``StrategyError`` naming it (``strategy.params.mu``), never
        coerced (``float("1e400")`` was an infinite setting, ``"0.1"`` a number)."""
        read = JsonReader()
        fields = strategy_fields(read, where, data)
        if read.problems:
            raise StrategyError(f"strategy settings are not valid: {read.refusal()}")
        return cls(StrategyName(fields["name"]), fields["params"])


def strategy_fields(read: JsonReader, where: str, value: object) -> dict[str, Any]:
    """A strategy's name and params (``{"name": "fedprox", "params": {"mu": 0.01}}``),
    each checked by ``read`` under ``where``: the name one of `StrategyName`, the params
    an object of finite numbers. Job terms read theirs with the terms' own reader."""
    data = read.mapping(where, value)
    name = read.choice(f"{where}.name", read.get(data, "name"), STRATEGY_NAMES)
    params = read.numbers(f"{where}.params", read.get(data, "params", {}))
    return {"name": name, "params": params}


_ALLOWED: dict[StrategyName, frozenset[str]] = {
    StrategyName.FEDAVG: frozenset({"weighted"}),
    StrategyName.FEDPROX: frozenset({"mu"}),
    StrategyName.MEDIAN: frozenset(),
    StrategyName.TRIMMED_MEAN: frozenset({"trim"}),
    StrategyName.KRUM: frozenset({"byzantine"}),
    StrategyName.MULTI_KRUM: frozenset({"byzantine", "select"}),
    StrategyName.NORM_BOUNDING: frozenset({"bound", "weighted"}),
}


def build_strategy(spec: StrategySpec) -> Strategy:
    """The strategy object for a job's spec; unknown settings are refused, not ignored."""
    extra = set(spec.params) - _ALLOWED[spec.name]
    if extra:
        raise StrategyError(f"strategy {spec.name.value} has no setting(s) {sorted(extra)}")
    p = spec.params
    match spec.name:
        case StrategyName.FEDAVG:
            return FedAvg(weighted=bool(p.get("weighted", 1.0)))
        case StrategyName.FEDPROX:
            return FedProx(mu=p.get("mu", 0.01))
        case StrategyName.MEDIAN:
            return Median()
        case StrategyName.TRIMMED_MEAN:
            return TrimmedMean(trim=p.get("trim", 0.2))
        case StrategyName.KRUM:
            return Krum(byzantine=_count(p, "byzantine", 1), select=1)
        case StrategyName.MULTI_KRUM:
            return Krum(byzantine=_count(p, "byzantine", 1), select=_count(p, "select", 2))
        case StrategyName.NORM_BOUNDING:
            return NormBounding(bound=p.get("bound", 1.0), weighted=bool(p.get("weighted", 0.0)))
    raise StrategyError(f"strategy {spec.name} is not implemented")  # pragma: no cover


def _count(params: Mapping[str, float], key: str, default: int) -> int:
    value = params.get(key, float(default))
    if value != int(value):
        raise StrategyError(f"strategy setting {key} must be a whole number, got {value}")
    return int(value)
