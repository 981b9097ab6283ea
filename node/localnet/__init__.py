"""A local data space on one machine: member node processes and their dev chain.

The demo and the tests start real node processes (real gRPC with TLS, real
databases) and one embedded EVM chain; this package launches, watches and stops
them, including a network left running after the demo ends.
"""
