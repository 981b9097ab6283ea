"""A federated job: the terms a coordinator publishes and members agree to.

A job is a contract: its canonical bytes are what the usage-policy agreement
(``use`` for purpose ``model-training``, no distribution) refers to, so every
setting that changes what a member reveals (strategy, secure aggregation, the
clipping bound, differential privacy) or how its update is weighed (the cap on
claimed examples) is part of it and of its digest.

Two terms have defaults that protect the model when the operator leaves them out, and
why: in a plain FedAvg or FedProx round the coordinator averages what members send,
so one hostile member sending 3e38 everywhere and claiming 10**12 examples made the
signed version 1 its own model. Without an ``update_clip`` (or DP's clip, or
norm bounding) such a job clips every change to ``DEFAULT_UPDATE_CLIP``, generous
enough never to touch honest training (the project's models change by about 1 to 3
a round) and small enough that one member moves the model by a bounded step, not to
float32's limit; robust strategies (median, trimmed mean, Krum) need no clip. And a
claimed example count buys weight only where the terms bound it: without
``max_examples_per_member`` FedAvg and FedProx take the plain mean (``aggregator``),
and terms asking for a weighted mean without that bound are refused. The defaults
are derived, not written into the terms, so terms (and digests) made before them
read the same; an explicit term the operator sets always wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qdspace.federation.dp import DPConfig, dp_fields
from qdspace.federation.errors import FederationError
from qdspace.federation.json_reader import MISSING, JsonReader
from qdspace.federation.params import Shapes, size_of
from qdspace.federation.secagg_masks import Quantizer
from qdspace.federation.secagg_messages import SecAggConfig
from qdspace.federation.strategies import (
    SUM_BASED,
    FedAvg,
    FedProx,
    NormBounding,
    Strategy,
    StrategyName,
    StrategySpec,
    build_strategy,
    strategy_fields,
)

TRAINING_PURPOSE = "model-training"
#: Most scalars a job's model may have: 2**26 (256 MiB of float32). The largest model
#: the project ships is an ``el-cnn`` at ``el_cnn.MAX_WIDTH`` (11.8 M scalars, 47 MB;
#: the update benchmark sends 46.8 MB), so this leaves over five times that. Terms come
#: from a peer: without a cap a coordinator could set shapes whose download limit (and
#: every round buffer a member allocates for them) is any size it likes.
MAX_VECTOR_LEN = 1 << 26
DEFAULT_PHASE_TIMEOUT_S = 120.0
#: Longest phase deadline terms may set (a day): terms come from a peer.
MAX_PHASE_TIMEOUT_S = 86_400.0
#: Most rounds a job may have. Terms come from a peer and a round costs each member a
#: training run and an upload: without a ceiling a coordinator could keep members (and
#: the history every status used to carry) going for as long as ``uint32`` allows. The
#: longest job the project runs has 50 rounds; a member's own ceiling is usually lower
#: (``member_floor.MemberFloor.max_rounds``).
MAX_ROUNDS = 10_000
#: Largest example count an update may claim (the weight of plain FedAvg), whatever the
#: terms; ``JobSpec.max_examples_per_member`` may set a lower one.
MAX_EXAMPLES = 10**12
#: The L2 bound on a member's change in a plain FedAvg/FedProx job whose terms set none
#: (``JobSpec.clip``): dozens of times the changes the project's models make in a round
#: (``logreg`` about 1, the demo's CNN 1 to 3), so honest updates pass as sent, while a
#: hostile one moves the model by at most this much (divided among the members).
DEFAULT_UPDATE_CLIP = 100.0
#: Strategies that average what members send: without a clip, one update sets the model.
_MEANS = frozenset({StrategyName.FEDAVG, StrategyName.FEDPROX})

#: Most dimensions one tensor of a job's model may have. The models the project ships
#: have at most four (an ``el-cnn`` convolution's ``(out, in, 3, 3)``; ``logreg`` and
#: ``mlp`` two), so this leaves twice that. Terms come from a peer: without it a tensor
#: of 100,000 dimensions of size 1 was a valid 1-scalar shape that every member kept,
#: hashed, wrote into each parameter header and carried through PyTorch and ONNX.
MAX_DIMENSIONS = 8


class JobSpecError(FederationError, ValueError):
    """A job's terms are inconsistent (for example a robust strategy with secure aggregation)."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything members must agree on before round 1.

    ``threshold`` is secure aggregation's ``t`` (at least that many members must stay
    until unmasking); ``update_clip`` is the L2 bound members apply to their change
    before sending it, and the coordinator applies again to every change it sees in a
    plain round (needed for secure aggregation, implied by DP's clip; a plain FedAvg or
    FedProx job without one gets ``DEFAULT_UPDATE_CLIP``, see ``clip``).
    ``phase_timeout_s`` is the deadline of each phase; stragglers miss the round.
    ``max_examples_per_member`` is the most examples one update may claim (its weight
    in a weighted FedAvg): without it one member claiming up to ``MAX_EXAMPLES`` takes
    nearly all of the weight. The coordinator refuses an update claiming more
    (``OUT_OF_RANGE``), so a member with more data claims at most this many; ``None``
    keeps only the ``MAX_EXAMPLES`` limit, and the mean is then unweighted
    (``aggregator``).
    """

    job_id: str
    coordinator: str
    model: str
    shapes: Shapes
    rounds: int
    min_members: int
    members: tuple[str, ...]
    strategy: StrategySpec = field(default_factory=StrategySpec)
    secure_aggregation: bool = False
    threshold: int = 2
    update_clip: float | None = None
    dp: DPConfig | None = None
    phase_timeout_s: float = DEFAULT_PHASE_TIMEOUT_S
    training: Mapping[str, float] = field(default_factory=dict)
    #: The purpose is part of the terms (and their digest) but only one is known: a
    #: member's agreement grants its model updates for training and nothing else
    #: (``federation.agreements``), so terms naming another purpose are refused by
    #: coordinator and member alike rather than carried along unread.
    purpose: str = TRAINING_PURPOSE
    #: Contract asset id (``federation.agreements``): when set, the coordinator accepts
    #: keys and updates only from members holding an active agreement for it.
    agreement_asset: str | None = None
    max_examples_per_member: int | None = None

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise JobSpecError(f"job {self.job_id}: " + "; ".join(problems))
        build_strategy(self.strategy)

    def _problems(self) -> list[str]:
        out = []
        if not self.job_id or not self.coordinator or not self.model:
            out.append("job id, coordinator and model must be named")
        if self.purpose != TRAINING_PURPOSE:
            out.append(
                f"purpose {self.purpose[:80]!r} is not {TRAINING_PURPOSE!r}: members agree to "
                "give model updates for training only (federation.agreements)"
            )
        if self.rounds < 1:
            out.append(f"rounds must be >= 1, got {self.rounds}")
        elif self.rounds > MAX_ROUNDS:
            count = f"{self.rounds:,}" if self.rounds < 10**18 else "over 10**18"
            out.append(
                f"rounds must be in 1..{MAX_ROUNDS:,} (the most a job may have), got {count}"
            )
        if len(set(self.members)) != len(self.members):
            out.append("members are listed more than once")
        if not 1 <= self.min_members <= len(self.members):
            out.append(f"min_members {self.min_members} must be in 1..{len(self.members)}")
        out.extend(self._strategy_floor_problems())
        out.extend(self._shape_problems())
        if not 0 < self.phase_timeout_s <= MAX_PHASE_TIMEOUT_S:
            out.append(f"phase timeout must be in (0, {MAX_PHASE_TIMEOUT_S:g}] seconds")
        if self.update_clip is not None and not 0 < self.update_clip < math.inf:
            out.append("update clip must be a finite number > 0")
        out.extend(self._examples_problems())
        if any(not math.isfinite(v) for v in self.training.values()):
            out.append("training settings must be finite numbers")
        if self.secure_aggregation:
            if self.strategy.name not in SUM_BASED:
                out.append(
                    f"strategy {self.strategy.name.value} needs single updates and cannot run "
                    "under secure aggregation (use fedavg, fedprox or norm_bounding)"
                )
            out.extend(self._threshold_problems())
            if self._agreed_clip is None:  # a masked sum is bounded by a clip members chose
                out.append("secure aggregation needs a clipping bound (update_clip or dp)")
        if self.dp is not None and self.strategy.name not in SUM_BASED:
            out.append(
                f"differential privacy is accounted for sums of clipped updates; strategy "
                f"{self.strategy.name.value} is not one (use fedavg, fedprox or norm_bounding)"
            )
        return out

    def _strategy_floor_problems(self) -> list[str]:
        """A round closes with ``min_members`` updates, so the strategy must work with that
        many (Krum needs ``2f + 3``): else a round with fewer could never be aggregated."""
        try:
            need = build_strategy(self.strategy).min_updates
        except FederationError:  # StrategyError
            return []  # refused, saying why, by ``build_strategy`` in ``__post_init__``
        if self.min_members < need:
            return [
                f"min_members {self.min_members} is under the {need} updates strategy "
                f"{self.strategy.name.value} needs to aggregate a round"
            ]
        return []

    def _examples_problems(self) -> list[str]:
        cap = self.max_examples_per_member
        if cap is None:
            if self.strategy.params.get("weighted", 0.0):
                return [
                    f"strategy {self.strategy.name.value} weighted by claimed examples needs "
                    "max_examples_per_member: without it one member claiming 10**12 examples "
                    "takes nearly all of the weight"
                ]
            return []
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_EXAMPLES:
            return [
                "max_examples_per_member must be a whole number in 1..10**12, "
                f"got {str(cap)[:40]!r}"
            ]
        return []

    @property
    def examples_cap(self) -> int:
        """The most examples one update may claim under these terms."""
        cap = self.max_examples_per_member
        return MAX_EXAMPLES if cap is None else cap

    def _shape_problems(self) -> list[str]:
        """At most ``MAX_DIMENSIONS`` dimensions a tensor, every one at least 1 (a negative
        one made ``((-1,), (3,))`` a model of "2" scalars), and at most ``MAX_VECTOR_LEN``
        scalars in all."""
        if not self.shapes:
            return ["the model has no parameters"]
        for i, shape in enumerate(self.shapes):
            if len(shape) > MAX_DIMENSIONS:
                return [
                    f"tensor {i} has {len(shape):,} dimensions: a tensor may have at most "
                    f"{MAX_DIMENSIONS}"
                ]
            if any(d > MAX_VECTOR_LEN for d in shape):
                return [
                    f"tensor {i} has a dimension over {MAX_VECTOR_LEN:,}: a job may have at "
                    f"most {MAX_VECTOR_LEN:,} parameters"
                ]
            if not all(d >= 1 for d in shape):
                return [f"tensor {i} has shape {list(shape)[:8]}: every dimension must be >= 1"]
        if (n := size_of(self.shapes)) > MAX_VECTOR_LEN:
            count = f"{n:,}" if n < 10**18 else "over 10**18"  # many dimensions: no 90 digits
            return [f"the model has {count} parameters, a job may have at most {MAX_VECTOR_LEN:,}"]
        return []

    def _threshold_problems(self) -> list[str]:
        """``t`` must be a strict majority of the members (else a coordinator showing two
        survivor sets to two halves could collect both kinds of share of one member) and
        reachable: at most ``min_members``, and, when the coordinator takes part, by the
        other members alone (its own consistency signature never counts)."""
        n, t = len(self.members), self.threshold
        out = []
        if t < 2 or 2 * t <= n:
            out.append(
                f"threshold {t} must be more than half of the {n} members (t > n/2, at "
                f"least {max(2, n // 2 + 1)}): a smaller one lets a coordinator that shows "
                "different survivor sets to different members unmask one member's update"
            )
        if t > self.min_members:
            out.append(f"threshold {t} must not exceed min_members {self.min_members}")
        if t >= n:
            out.append(
                f"threshold {t} leaves no member enough peers: each masks its update with at "
                f"least {t} others (so that one of them is honest), so a job needs at least "
                f"{t + 1} members"
            )
        others = n - 1 if self.coordinator in self.members else n
        if t > others:
            out.append(
                f"threshold {t} exceeds the {others} members other than the coordinator "
                f"{self.coordinator}, whose signatures alone must reach it"
            )
        return out

    @property
    def sum_mode(self) -> bool:
        """Aggregate as an unweighted mean of clipped changes (secure aggregation or DP)."""
        return self.secure_aggregation or self.dp is not None

    @property
    def _agreed_clip(self) -> float | None:
        """The clip the terms name (DP's, ``update_clip`` or norm bounding's bound)."""
        if self.dp is not None:
            return self.dp.clip
        if self.update_clip is not None:
            return self.update_clip
        if self.strategy.name is StrategyName.NORM_BOUNDING:
            return self.strategy.params.get("bound", 1.0)
        return None

    @property
    def clip(self) -> float | None:
        """The L2 bound on every member's change (``None``: no clipping): each member
        applies it before sending, the coordinator to each plain update it receives.
        A FedAvg or FedProx job whose terms name none gets ``DEFAULT_UPDATE_CLIP``
        (module docstring); robust strategies get none."""
        agreed = self._agreed_clip
        if agreed is None and self.strategy.name in _MEANS:
            return DEFAULT_UPDATE_CLIP
        return agreed

    @property
    def weighs_examples(self) -> bool:
        """Whether a plain round weighs each update by the examples it claims: only when
        ``max_examples_per_member`` bounds the claim (FedAvg and FedProx weigh by default
        then; norm bounding only when asked)."""
        if self.max_examples_per_member is None:
            return False
        default = 0.0 if self.strategy.name is StrategyName.NORM_BOUNDING else 1.0
        return bool(self.strategy.params.get("weighted", default))

    def aggregator(self) -> Strategy:
        """The strategy a plain round aggregates with: ``build_strategy`` of the terms,
        with the mean unweighted unless ``weighs_examples``."""
        strategy = build_strategy(self.strategy)
        if isinstance(strategy, FedAvg | FedProx | NormBounding) and not self.weighs_examples:
            return dataclasses.replace(strategy, weighted=False)
        return strategy

    @property
    def vector_len(self) -> int:
        return size_of(self.shapes)

    def secagg_config(self, round_: int, attempt: int) -> SecAggConfig:
        """The SecAgg settings of one round attempt; coordinator and members derive the same."""
        if not self.secure_aggregation or self.clip is None:
            raise JobSpecError(f"job {self.job_id} does not use secure aggregation")
        # Every coordinate of an L2-clipped change is within +/- clip; distributed DP noise
        # adds to that, so leave six standard deviations of headroom before wrapping.
        headroom = 0.0 if self.dp is None else 6.0 * self.dp.member_noise_std(self.min_members)
        quantizer = Quantizer(clip=self.clip + headroom, max_members=len(self.members))
        coordinator = self.coordinator if self.coordinator in self.members else ""
        return SecAggConfig(
            self.job_id,
            round_,
            self.threshold,
            self.vector_len,
            quantizer,
            attempt=attempt,
            coordinator=coordinator,
        )

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "job_id": self.job_id,
                "coordinator": self.coordinator,
                "model": self.model,
                "shapes": [list(s) for s in self.shapes],
                "rounds": self.rounds,
                "min_members": self.min_members,
                "members": list(self.members),
                "strategy": self.strategy.to_dict(),
                "secure_aggregation": self.secure_aggregation,
                "threshold": self.threshold,
                "update_clip": self.update_clip,
                "dp": None if self.dp is None else self.dp.to_dict(),
                "phase_timeout_s": self.phase_timeout_s,
                "training": {k: float(v) for k, v in sorted(self.training.items())},
                "purpose": self.purpose,
            }
            | ({} if self.agreement_asset is None else {"agreement_asset": self.agreement_asset})
            | (
                {}
                if self.max_examples_per_member is None
                else {"max_examples_per_member": self.max_examples_per_member}
            )
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Terms as JSON gives them (a peer's, an operator's, a job file's), read strictly:
        each value must already be of its field's type, nothing is coerced (``rounds``
        2.9 is not 2, ``"false"`` is not true, ``1e400`` is no number of rounds), and
        every value that is not is named in one ``JobSpecError``."""
        read = _TermsReader(data)
        fields = read.fields()
        if read.problems:
            raise JobSpecError(f"job terms are not valid: {read.refusal()}")
        strategy, dp = fields.pop("strategy"), fields.pop("dp")
        try:
            return cls(
                **fields,
                strategy=StrategySpec(StrategyName(strategy["name"]), strategy["params"]),
                dp=None if dp is None else DPConfig(**dp),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            if isinstance(exc, FederationError):
                raise
            raise JobSpecError(f"job terms are not valid: {exc!r}") from exc

    def canonical_bytes(self) -> bytes:
        """Sorted-key compact JSON: the bytes an agreement and the ledger refer to."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()


class _TermsReader(JsonReader):
    """The fields of a ``JobSpec`` from terms as JSON gives them, each value checked
    against its field's JSON type (`qdspace.federation.json_reader`): ``int(2.9)``
    rounds and ``bool("false")`` changed what a caller asked for, and ``int()`` of
    JSON's ``1e400`` raised ``OverflowError`` (an INTERNAL answer, an uncaught error in
    a member). What does not fit is listed in ``problems`` under its place
    (``shapes[0][1]``, ``dp.clip``), so one refusal names every bad value.
    """

    def __init__(self, data: object) -> None:
        super().__init__()
        self._data = self.mapping("terms", data)

    def fields(self) -> dict[str, Any]:
        get = self._get
        return {
            "job_id": self.text("job_id", get("job_id")),
            "coordinator": self.text("coordinator", get("coordinator")),
            "model": self.text("model", get("model")),
            "shapes": tuple(
                self._shape(f"shapes[{i}]", s)
                for i, s in enumerate(self.sequence("shapes", get("shapes")))
            ),
            "rounds": self.whole("rounds", get("rounds")),
            "min_members": self.whole("min_members", get("min_members")),
            "members": tuple(
                self.text(f"members[{i}]", m)
                for i, m in enumerate(self.sequence("members", get("members")))
            ),
            "strategy": strategy_fields(self, "strategy", get("strategy", {"name": "fedavg"})),
            "secure_aggregation": self.flag("secure_aggregation", get("secure_aggregation", False)),
            "threshold": self.whole("threshold", get("threshold", 2)),
            "update_clip": self.maybe(self.real, "update_clip", get("update_clip", None)),
            "dp": self.maybe(lambda where, v: dp_fields(self, where, v), "dp", get("dp", None)),
            "phase_timeout_s": self.real(
                "phase_timeout_s", get("phase_timeout_s", DEFAULT_PHASE_TIMEOUT_S)
            ),
            "training": self.numbers("training", get("training", {})),
            "purpose": self.text("purpose", get("purpose", TRAINING_PURPOSE)),
            "agreement_asset": self.maybe(
                self.text, "agreement_asset", get("agreement_asset", None)
            ),
            "max_examples_per_member": self.maybe(
                self.whole, "max_examples_per_member", get("max_examples_per_member", None)
            ),
        }

    def _get(self, key: str, default: Any = MISSING) -> Any:
        return self.get(self._data, key, default)

    def _shape(self, where: str, value: Any) -> tuple[int, ...]:
        """A tensor's dimensions; more than ``MAX_DIMENSIONS`` are refused unread."""
        dims = self.sequence(where, value)
        if len(dims) > MAX_DIMENSIONS:
            self.problems.append(
                f"{where} must have at most {MAX_DIMENSIONS} dimensions, got {len(dims):,}"
            )
            return ()
        return tuple(self.whole(f"{where}[{j}]", d) for j, d in enumerate(dims))
