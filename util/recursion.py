"""Keep the interpreter's recursion limit where the C stack can hold it.

Why: web3's account code imports py_ecc, which raises the recursion limit to 100,000 at
import (py-evm raises it to 12,288). Python's JSON decoder recurses in C, once per level
of nesting, under that limit: with it at 100,000, a body of a few hundred kilobytes of
``[`` overflows the C stack and the process dies with a segmentation fault instead of
raising. A managed host serves every tenant in one process, so one logged-in user (or
any peer whose bytes reach a ``json.loads``) took every tenant down. The parsers that
read peer bytes check the nesting first (`connector.ingest.json_too_deep`,
`policies.odrl.jsonld.decode`); this is the floor under all of them: a node or host
process imports py_ecc at start (it raises the limit once, at its first import, never
again) and puts the limit back, so a parser nobody guarded raises `RecursionError`
(a refusal) rather than killing the process.

Nothing the node runs needs deep recursion: the EVM that wants 12,288 frames runs in
the chain's own process (``python -m qdspace.ledger.chain``), which does not call this.
"""

from __future__ import annotations

import contextlib
import sys

#: the interpreter's own default: deep enough for every stack the node builds
NODE_RECURSION_LIMIT = 1000


def hold_recursion_limit(limit: int = NODE_RECURSION_LIMIT) -> None:
    """Import py_ecc now (when installed) and put the recursion limit back to `limit`."""
    with contextlib.suppress(ImportError):
        import py_ecc  # noqa: F401  (raises the limit once, at its first import)
    sys.setrecursionlimit(limit)
