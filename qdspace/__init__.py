"""qdspace: a federated quality-data space for manufacturing supply chains.

The project keeps its packages in top-level folders (``node/``, ``connector/``,
``policies/``, ``ledger/``, ``federation/``, ``inference/``, ``protocols/``, ``util/``)
and imports them under one namespace: ``qdspace.node``, ``qdspace.connector``, ... Each
entry of
this folder is a relative symbolic link to its top-level folder, so every tool (pytest,
mypy, setuptools, an editor) sees one ordinary package without an import hook, and a
wheel copies the files in: ``pip install .`` puts only ``qdspace`` in site-packages,
where generic names such as ``node`` or ``ledger`` would collide with other projects.
"""
