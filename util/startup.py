"""A server's start-up without the cyclic garbage collector walking what it loads.

A node (or a managed host) imports its whole stack once at start: FastAPI and its
pydantic models, SQLAlchemy's tables, gRPC's stubs, the node's routes, about a million
objects that live as long as the process. The cyclic collector runs every 700 new
container objects and, as the heap grows, its older generations walk more and more of
those survivors again: importing ``qdspace.node.run`` took 3.9 s of CPU with it and
3.4 s without (medians of six, two cores), and a node's start to ``/readyz`` 3.15 s of
CPU and 3.08 s of wall time before this module, 2.69 s and 2.62 s with it (six restarts
of one node, old and new alternating; bench/node_start.py measures the start). None of
what an import makes is cyclic garbage worth collecting, so the
collector is paused while the stack loads, and runs as before once it has; the node
then moves what it loaded out of the collector's view for good (``gc.freeze`` in
`node.run`). Only imports and app building are covered: a migration that rewrites rows
runs with the collector on, so a long one cannot grow memory unchecked.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (as it was afterwards, on or off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
