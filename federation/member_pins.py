"""Which member id holds each member name of a job, pinned on its first accepted call.

A job lists its members by certificate name, and the coordinator admits a caller by
the name its certificate carries. The authority may free a name when its holder
leaves and issue it to a newcomer: another key, another member id. Without a pin, the
newcomer would take over the old holder's place in a running job (and, in a job
without a contract asset, download its models). So the first accepted call under a
name records the caller's member id, and a later call under that name from another
id is refused as ``NOT_A_MEMBER`` (the member side pins its coordinator the same way).

The pins live in the job's directory (``members.json``) beside its terms and
checkpoint, so a restarted coordinator keeps them; they are written once per member
and job, atomically. A pins file that cannot be read stops the job from resuming
rather than silently dropping the pins.
"""

from __future__ import annotations

import json
from pathlib import Path

from qdspace.federation.errors import CheckpointError, RefusalReason, UpdateRefused
from qdspace.util.files import write_atomic

PINS_FILE = "members.json"
#: How many characters of a member id a refusal shows.
SHORT_ID = 12


def _short(member_id: str) -> str:
    return member_id if len(member_id) <= SHORT_ID else member_id[:SHORT_ID] + "..."


class MemberPins:
    """The member id pinned to each name of one job; persisted in its directory."""

    def __init__(self, directory: Path, pins: dict[str, str] | None = None) -> None:
        self._path = directory / PINS_FILE
        self._pins = dict(pins or {})

    @classmethod
    def load(cls, directory: Path) -> MemberPins:
        """The pins saved in ``directory`` (none if the job never admitted anyone)."""
        path = directory / PINS_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(directory)
        except ValueError as exc:
            raise CheckpointError(f"{path}: member pins are not JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise CheckpointError(f"{path}: member pins must map names to member ids")
        return cls(directory, data)

    def get(self, name: str) -> str | None:
        return self._pins.get(name)

    def check(self, job_id: str, name: str, member_id: str) -> None:
        """Refuse ``member_id`` calling as ``name`` when the name is pinned to another id."""
        pinned = self._pins.get(name)
        if pinned is not None and pinned != member_id:
            raise UpdateRefused(
                RefusalReason.NOT_A_MEMBER,
                f"{name} takes part in job {job_id} as member {_short(pinned)}, not as "
                f"{_short(member_id)}: a name reissued to another member does not inherit "
                "its place in a running job",
            )

    def pin(self, job_id: str, name: str, member_id: str) -> None:
        """Record ``member_id`` as the holder of ``name`` on its first accepted call (saved
        before returning); refuse it, like ``check``, if another id holds the name."""
        self.check(job_id, name, member_id)
        if name in self._pins:
            return
        pins = self._pins | {name: member_id}
        write_atomic(self._path, json.dumps(pins, sort_keys=True).encode())
        self._pins = pins
