"""One rule for a published host:port, the directory's and the node's own setting's: never
a gRPC target that names a socket on the dialling machine."""

from __future__ import annotations

import pytest

from qdspace.node.config import check_advertised
from qdspace.node.identity.directory import MalformedDirectory, check_address
from qdspace.util.hosts import is_host_port

GOOD = ["cellex.example:7443", "10.0.0.5:1", "[::1]:65535", "node_a:80", "host.example.:443"]
BAD = [
    "unix:run.sock:1",  # gRPC: a Unix socket path
    "unix-abstract:x:1",  # an abstract Unix socket
    "vsock:2:7443",  # a VM socket
    "[::1:80",  # an unbalanced bracket
    "host:0",
    "host:65536",
    "host:\uff11\uff12",  # digits, not ASCII ones
    ":7443",
    "host",
    "a" * 254 + ":1",
    "ho st:1",
]


@pytest.mark.parametrize("address", GOOD)
def test_a_dns_name_or_address_and_port_is_taken(address: str) -> None:
    assert is_host_port(address)
    assert check_address(address) == address
    assert check_advertised(address) == address


@pytest.mark.parametrize("address", BAD)
def test_anything_else_is_refused_by_the_directory_and_the_node_s_setting(address: str) -> None:
    assert not is_host_port(address)
    with pytest.raises(MalformedDirectory, match="is not host:port"):
        check_address(address)
    with pytest.raises(ValueError, match=r"advertise_peer .* is not host:port"):
        check_advertised(address)
