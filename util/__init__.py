"""Small helpers every package may use: `qdspace.util` imports nothing from the project,
so a lower package (connector, ledger, federation, inference, policies) can depend on it
without depending on another.
"""
