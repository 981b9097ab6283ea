"""`collector_paused`: the cyclic collector is off inside, and as it was afterwards.

A node's start pauses the collector while it imports its stack and builds its apps
(`util.startup`); what the block found must be what it leaves, whether it ends or
raises, or a node would serve with its collector off (memory growing with every
cyclic structure a request leaves) or turn on one a caller had turned off.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from qdspace.util.startup import collector_paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled: bool) -> None:
    gc.enable() if enabled else gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled


def test_a_block_that_raises_leaves_the_collector_on() -> None:
    gc.enable()
    with pytest.raises(ImportError), collector_paused():
        raise ImportError("a module the stack could not load")
    assert gc.isenabled()


def test_nested_pauses_turn_it_on_only_at_the_outermost_end() -> None:
    gc.enable()
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()  # the inner end restored the outer block's "off"
    assert gc.isenabled()
