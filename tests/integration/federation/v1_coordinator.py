"""A coordinator node that announces another secure-aggregation protocol, for the
protocol-mismatch test of members.

Run as ``python v1_coordinator.py NODE_DIR PROTOCOL``: this version's node (``qdspace node
start --dir NODE_DIR``), except that a secure job's status announces ``PROTOCOL`` as its
wire protocol. An empty ``PROTOCOL`` is what a v1 coordinator sends: v1's status had no
such field, and protocol buffers read an absent string as empty. Everything else is this
node's; what is tested is what a member does on reading the status, before it sends
anything.
"""

from __future__ import annotations

import sys

from qdspace.federation import host


def main(node_dir: str, protocol: str) -> None:
    host.PROTOCOL = protocol  # type: ignore[misc]  # read by JobHost.view for each status
    from qdspace.node.cli import main as cli

    sys.argv = ["qdspace", "node", "start", "--dir", node_dir]
    cli()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
