"""``qdspace demo``: a local data space on loopback, told as the reference scenario.

The package is only a folder: ``story`` runs the demo (network, sample data,
handshakes, then the chapters in order and the summary), ``report`` holds the report
every step writes into, and each chapter (``trace`` with its printer ``trace_print``,
``contracts``, ``inspection``, ``federation``, ``ledger``) is a module of its own.
Chapters import ``report``, the operator-API client (``node.client``), ``localnet``
and the runtime and lower packages they need -- never this package's ``story`` and
never the CLI -- so nothing here imports in a circle.
"""
