"""Known usage purposes and what each is a kind of (for the ``isA`` operator).

Data, not code: a purpose is one line in `PURPOSES` (name -> broader purposes),
so a branch that adds one (say ``root-cause-analysis``) merges with another that
adds a different one. A purpose not listed here is still compared by equality
and set membership; only ``isA`` needs the taxonomy, and for an unlisted
purpose it holds only for the purpose itself.
"""

from __future__ import annotations

PURPOSES: dict[str, frozenset[str]] = {
    "quality-assurance": frozenset(),
    "failure-analysis": frozenset({"quality-assurance"}),
    "model-training": frozenset(),
    # Catena-X usage purposes (cx-odrl-profile), mapped onto the node's own.
    "cx.quality.base:1": frozenset({"quality-assurance"}),
    "cx.core.qualityNotifications:1": frozenset({"quality-assurance"}),
    "cx.core.industrycore:1": frozenset(),
}

_MAX_DEPTH = 16


def is_a(purpose: str, broader: str) -> bool:
    """Whether `purpose` is `broader` or (transitively) a kind of it."""
    frontier, seen = {purpose}, set()
    for _ in range(_MAX_DEPTH):
        if broader in frontier:
            return True
        seen |= frontier
        frontier = {up for item in frontier for up in PURPOSES.get(item, ())} - seen
        if not frontier:
            return False
    return False
