"""How many threads a computation may take: what it asks, at most the CPUs this process
may run on.

PyTorch's thread count is the whole process's (``torch.set_num_threads``), and what asks
for threads is not always the machine's owner: a federated job's terms are the
coordinator's (up to 64), and a managed host's tenant staff ask for their own training
(up to 64) in the one process that serves every tenant. More threads than usable CPUs
only oversubscribe the cores everyone shares, so a request is cut to the CPUs the
process may run on (its affinity, which a container's CPU set narrows), never below one.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def threads_for(asked: int) -> int:
    """The threads to run ``asked`` on: at most `usable_cpus`, at least one."""
    return max(1, min(asked, usable_cpus()))
