"""Which unit a frame shows: serial, order and batch from its file name or a sidecar.

An EL camera names each image after the cell or module it took (``ORD17_SN000123.png``)
or writes a small JSON file beside it; a verdict is worth little in the trace unless it
carries that serial, order and batch. Both ways are read here as plain functions: a
name pattern is a regular expression with named groups ``serial``, ``order``,
``batch``, matched against the whole file stem; a sidecar ``<stem>.json`` holds
``serial``, ``order_id``, ``batch_id`` and wins where both give a field. A frame whose
name does not match, or whose sidecar is malformed, is a :class:`FrameError` naming the
file: the station counts it as a bad frame rather than store a verdict tied to nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from qdspace.inference.errors import FrameError, InferenceError
from qdspace.inference.frames import read_bounded

#: the QDM columns' length; a longer value is refused, never cut
MAX_ID_CHARS = 64
#: a sidecar is a few ids; anything larger is no sidecar
MAX_SIDECAR_BYTES = 4096
GROUPS = {"serial": "serial", "order": "order_id", "batch": "batch_id"}
SIDECAR_KEYS = frozenset(GROUPS.values())
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class NamePatternError(InferenceError, ValueError):
    """A frame name pattern that is no regular expression or names no known group."""


@dataclass(frozen=True)
class ProductionContext:
    serial: str | None = None
    order_id: str | None = None
    batch_id: str | None = None

    def over(self, base: ProductionContext) -> ProductionContext:
        """This context, with ``base``'s values where this one has none."""
        return replace(
            base,
            **{k: v for k, v in vars(self).items() if v is not None},
        )


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, with at least one of the groups serial / order / batch."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise NamePatternError(f"name pattern {pattern!r}: {exc}") from None
    names = set(compiled.groupindex)
    if not names or not names <= set(GROUPS):
        raise NamePatternError(
            f"name pattern {pattern!r}: use named groups among (?P<serial>...), "
            f"(?P<order>...), (?P<batch>...); it has {sorted(names) or 'none'}"
        )
    return compiled


def _checked(frame_id: str, where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FrameError(frame_id, f"{where}: {key} must be a non-empty text")
    if len(value) > MAX_ID_CHARS or not _PRINTABLE.match(value):
        raise FrameError(
            frame_id, f"{where}: {key} must be printable and at most {MAX_ID_CHARS} characters"
        )
    return value.strip()


def context_from_name(pattern: re.Pattern[str], stem: str) -> ProductionContext:
    match = pattern.fullmatch(stem)
    if match is None:
        raise FrameError(stem, f"file name does not match the name pattern {pattern.pattern!r}")
    values = {
        GROUPS[g]: _checked(stem, "file name", g, v)
        for g, v in match.groupdict().items()
        if v is not None
    }
    return ProductionContext(**values)


def context_from_sidecar(path: Path, frame_id: str) -> ProductionContext | None:
    """The context in ``path`` (None: no sidecar there); a malformed one is a FrameError."""
    try:  # bounded, regular files only: a FIFO named <stem>.json must not hang the station
        raw = read_bounded(path, MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise FrameError(frame_id, f"{path.name}: {exc}") from None
    except OSError as exc:
        raise FrameError(frame_id, f"{path.name}: cannot read: {exc.strerror or exc}") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameError(frame_id, f"{path.name}: not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FrameError(frame_id, f"{path.name}: must be a JSON object")
    unknown = set(body) - SIDECAR_KEYS
    if unknown:
        raise FrameError(
            frame_id,
            f"{path.name}: unknown keys {sorted(unknown)}; use {sorted(SIDECAR_KEYS)}",
        )
    values = {k: _checked(frame_id, path.name, k, v) for k, v in body.items() if v is not None}
    return ProductionContext(**values)
