"""Threads asked for are cut to the CPUs the process may run on, never below one."""

from __future__ import annotations

import os

from qdspace.util.cpus import threads_for, usable_cpus


def test_a_request_is_cut_to_the_usable_cpus_and_never_below_one() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus() == cpus
    assert threads_for(64) == min(64, cpus)
    assert threads_for(1) == 1
    assert threads_for(0) == 1 and threads_for(-3) == 1


def test_a_narrower_affinity_narrows_it() -> None:
    """A container's CPU set (or taskset) is what the process may use, not the machine."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus() == 1 and threads_for(64) == 1
    finally:
        os.sched_setaffinity(0, before)
