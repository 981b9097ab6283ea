"""``python -m qdspace``: the command line, as the ``qdspace`` script runs it."""

from qdspace.node.cli import main

main()
