"""The class balance of a split: counts per label and split, and what is too thin to trust.

Shown before a training starts and kept with the model version's metrics, because a
held-out F1 measured on three defective images says little, and a label missing from
train cannot be learned. A split without a single good or defective training image
cannot be trained at all and is refused; everything thinner is a warning the operator
sees before the first epoch. Pure: counts in, report out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from qdspace.inference.dataset import BINARY_CLASSES
from qdspace.inference.errors import DatasetError
from qdspace.inference.gate import MIN_AUDIT_PER_CLASS
from qdspace.inference.image_split import ImageSplit
from qdspace.inference.splits import SPLIT_NAMES

#: fewer images of a label than this in a split is worth a warning
MIN_PER_SPLIT = 5


@dataclass(frozen=True)
class BalanceReport:
    """Images per split and label, per split and pass/fail, and the warnings they raise."""

    labels: Mapping[str, Mapping[str, int]]
    outcomes: Mapping[str, Mapping[str, int]]
    warnings: tuple[str, ...]

    def metrics(self) -> dict[str, float]:
        """Counts as model-version metrics: ``images.<split>.<label>`` and
        ``images.<split>.<ok|defective>``."""
        out: dict[str, float] = {}
        for split in SPLIT_NAMES:
            for label, n in self.labels[split].items():
                out[f"images.{split}.{label}"] = float(n)
            for outcome, n in self.outcomes[split].items():
                out[f"images.{split}.{outcome}"] = float(n)
        return out

    def table(self) -> list[tuple[str, ...]]:
        """Rows ``(label, train, val, test)``, then one a pass/fail outcome."""
        every = sorted({lab for split in SPLIT_NAMES for lab in self.labels[split]})
        rows = [(lab, *(str(self.labels[s].get(lab, 0)) for s in SPLIT_NAMES)) for lab in every]
        for outcome in BINARY_CLASSES:
            rows.append(
                (f"= {outcome}", *(str(self.outcomes[s].get(outcome, 0)) for s in SPLIT_NAMES))
            )
        return rows


def balance_report(split: ImageSplit, failing: Mapping[str, bool]) -> BalanceReport:
    """Counts of ``split`` by label and by outcome (``failing[label]``: it counts as bad).

    Raises :class:`DatasetError` when the training split lacks good or defective images.
    """
    labels: dict[str, dict[str, int]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for name in SPLIT_NAMES:
        files = split.files(name)
        labels[name] = dict(sorted(Counter(split.labels[f] for f in files).items()))
        bad = sum(1 for f in files if failing[split.labels[f]])
        outcomes[name] = {BINARY_CLASSES[0]: len(files) - bad, BINARY_CLASSES[1]: bad}
    for outcome in BINARY_CLASSES:
        if outcomes["train"][outcome] == 0:
            raise DatasetError(
                f"no {outcome} image in the training split ({sum(outcomes['train'].values())} "
                "images): a model cannot learn a class it never sees; label more images"
            )
    return BalanceReport(labels, outcomes, tuple(_warnings(labels, outcomes)))


def _warnings(
    labels: Mapping[str, Mapping[str, int]], outcomes: Mapping[str, Mapping[str, int]]
) -> list[str]:
    out = []
    every = sorted({lab for split in SPLIT_NAMES for lab in labels[split]})
    for label in every:
        for split in SPLIT_NAMES:
            n = labels[split].get(label, 0)
            if n == 0:
                out.append(f"label {label!r} has no image in {split}")
            elif n < MIN_PER_SPLIT:
                out.append(f"label {label!r} has only {n} image(s) in {split}")
    for outcome in BINARY_CLASSES:
        n = outcomes["test"][outcome]
        if n < MIN_AUDIT_PER_CLASS:
            out.append(
                f"only {n} {outcome} image(s) in test: held-out figures are noisy, and the "
                f"promotion gate needs {MIN_AUDIT_PER_CLASS} of each in its audit set"
            )
    return out
