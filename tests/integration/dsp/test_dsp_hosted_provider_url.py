"""A hosted member's staff name the DSP provider to negotiate with (``POST
/v1/dsp/negotiations``), and the host's network is not theirs to probe.

Real processes, real mutual TLS: an authority service; Cellex, a node of its own that
joined with a code and publishes its DSP listener in the member directory; a managed
host whose tenant SunArc joined the same way (its database a SQLite file, or a schema of
the test PostgreSQL server: `backend`), with one static peer configured on ``localhost``
by the host's operator. On the host's loopback: a port that is closed, a plain TCP
service, a TLS service of another CA, and a decoy that listens and never answers.

- SunArc's staff negotiate with Cellex at its published DSP address.
- An address no member publishes (the decoy on 127.0.0.1) is refused before a
  connection is opened: the decoy is never dialled.
- On the static peer's host every failure to reach a provider (closed, plain TCP,
  another CA) is one answer, 409, without a word of the transport's (were: 502 with
  ``ConnectError: All connection attempts failed``, ``WRONG_VERSION_NUMBER``,
  ``CERTIFICATE_VERIFY_FAILED``: a map of the host's ports).
- Cellex's own operator keeps its freedom: any address, and the failure as it was.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.config import NodeSettings
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import build_ca_cert, cert_to_pem, key_to_pem
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from ..host.conftest import Host, qdspace
from .conftest import runtime_of, wait_for
from .joined import FOLLOW_FAST, join_with_code

pytestmark = pytest.mark.integration

PG_ENV = "QDSPACE_TEST_PG_URL"
#: the static peer the host's operator gave the tenant: its host is reachable, any port
STATIC_HOST = "localhost"
#: what no answer to a hosted member's staff may say (the transport's detail)
TRANSPORT_WORDS = ("ConnectError", "connection attempts", "SSL", "WRONG_VERSION", "CERTIFICATE")


@dataclass
class Space:
    host: Host
    net: LocalNetwork
    tenant: str
    token: str
    workdir: Path

    def staff(self) -> httpx.Client:
        """The tenant's operator API at the host's listener, with its token."""
        return self.host.client(self.token)


def _plain_service(stop: threading.Event) -> socket.socket:
    """A plain TCP service on loopback (a database, an internal HTTP API): it answers
    every connection with a line of HTTP and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with closing(connection):
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    return server


def _foreign_tls(stop: threading.Event, folder: Path) -> socket.socket:
    """A TLS service on loopback whose certificate another CA issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "foreign.pem").write_bytes(cert_to_pem(build_ca_cert("elsewhere", key, valid_days=1)))
    (folder / "foreign.key").write_bytes(key_to_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "foreign.pem", folder / "foreign.key")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.settimeout(5)
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client refuses our certificate: the handshake ends
            finally:
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


def _code_file(workdir: Path, authority: Authority, name: str, role: str) -> Path:
    path = workdir / f"{name}.code"
    path.write_text(str(authority.create_enrollment(name=name, role=role)) + "\n")
    return path


def _hosted_space(
    workdir: Path, tenant_db_url: str | None, stack: ExitStack
) -> tuple[Host, LocalNetwork, str]:
    """The authority service, Cellex (a node of its own) and the host with tenant SunArc
    (its database at `tenant_db_url`, else a SQLite file), all started; stopped by
    `stack`. Returns the host, the network and the tenant's token."""
    authority = Authority.init(workdir / "authority", "hosted-dsp")
    service = AuthorityProcess(authority.directory)
    url = service.start()
    stack.callback(service.stop)
    net = LocalNetwork(workdir, members=(), chain=False)
    stack.callback(net.stop)
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    net.members["cellex"] = join_with_code(workdir, url, code, MemberSpec("cellex", "supplier"), {})
    host = Host(workdir, workdir / "H", net, free_port(), {"sunarc": free_port()})
    stack.callback(host.stop)
    done = qdspace("host", "init", "--dir", str(host.directory), "--api-port",
                   str(host.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    extra: list[str] = []
    if tenant_db_url is not None:
        url_file = workdir / "sunarc.db-url"
        url_file.write_text(f"{tenant_db_url}\n")
        extra = ["--db-url-file", str(url_file)]
    code_file = _code_file(workdir, authority, "sunarc", "oem")
    done = qdspace("host", "tenant", "add", "--dir", str(host.directory), "--name", "sunarc",
                   "--role", "oem", "--authority-url", url, "--code-file", str(code_file),
                   "--grpc-port", str(host.ports["sunarc"]), "--dsp-port", str(free_port()),
                   *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    tenant = host.directory / "tenants" / "sunarc"
    fast = {k: v for k, v in FOLLOW_FAST.items() if k != "dsp_port"}  # (its port: the host's)
    NodeSettings.load(tenant).model_copy(update=fast).save()
    add_peers(tenant, {"decoy": f"{STATIC_HOST}:1"})  # the host's operator's static peer
    out = workdir / "sunarc.token"
    done = qdspace("host", "tenant", "token", "--dir", str(host.directory), "--name", "sunarc",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    net.start()
    host.start()
    return host, net, out.read_text().strip()


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} not set"),
            ],
        ),
    ],
)
def space(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Space]:
    """The space, its tenant's database on `request.param` (``backend``)."""
    workdir = tmp_path_factory.mktemp(f"hosted-dsp-{request.param}")
    with ExitStack() as stack:
        tenant_url = None
        if request.param == "postgres":
            tenant_url, _ = stack.enter_context(fresh_pg_schema("qdspace_hosted_dsp"))
        host, net, token = _hosted_space(workdir, tenant_url, stack)
        yield Space(host, net, "sunarc", token, workdir)


def _cellex_published(space: Space) -> str:
    """Cellex's DSP address once the tenant holds it from the directory."""
    dsp: str = runtime_of(space.net, "cellex")["dsp"]
    held = NodeLayout(space.host.directory / "tenants" / space.tenant).member_directory

    def listed() -> bool:
        try:
            text = held.read_text()
        except FileNotFoundError:
            return False
        return dsp.removeprefix("https://") in text

    wait_for("Cellex's DSP address in the tenant's directory", listed, timeout=60)
    return dsp


def _negotiate(client: httpx.Client, url: str) -> httpx.Response:
    body = {"provider_url": url, "dataset_id": "inspections"}
    return client.post("/v1/dsp/negotiations", json=body)


def _negotiations(space: Space) -> int:
    with space.staff() as staff:
        found: list[Any] = staff.get("/v1/contracts/negotiations").json()
    return len(found)


def test_a_hosted_member_negotiates_with_a_provider_the_directory_publishes(
    space: Space,
) -> None:
    url = _cellex_published(space)
    with space.staff() as staff:
        started = _negotiate(staff, url)
    assert started.status_code == 201, started.text
    cellex = space.net["cellex"].keys().identity.member_id
    assert started.json()["provider"] == cellex


def test_an_address_no_member_publishes_is_refused_and_never_dialled(space: Space) -> None:
    before = _negotiations(space)
    decoy = socket.create_server(("127.0.0.1", 0))  # a service inside the host's network
    with decoy:
        url = f"https://127.0.0.1:{decoy.getsockname()[1]}"
        with space.staff() as staff:
            refused = _negotiate(staff, url)
        assert refused.status_code == 409, refused.text  # was: 502, after dialling it
        detail = refused.json()["detail"]
        assert detail.startswith("provider not reachable") and "member directory" in detail
        decoy.setblocking(False)
        with pytest.raises(BlockingIOError):
            decoy.accept()  # no connection was ever made to it
    assert _negotiations(space) == before  # nothing opened for it


def test_every_failure_to_reach_an_allowed_address_is_one_answer(space: Space) -> None:
    stop = threading.Event()
    with ExitStack() as stack:
        plain = stack.enter_context(_plain_service(stop))
        foreign = stack.enter_context(_foreign_tls(stop, space.workdir))
        stack.callback(stop.set)  # (first: then the sockets close)
        ports = {
            "closed": free_port(),
            "plain TCP": plain.getsockname()[1],
            "another CA": foreign.getsockname()[1],
        }
        answers = {}
        with space.staff() as staff:
            for what, port in ports.items():
                url = f"https://{STATIC_HOST}:{port}"
                answer = _negotiate(staff, url)
                answers[what] = (answer.status_code, answer.json()["detail"].replace(url, "URL"))
    statuses = {status for status, _ in answers.values()}
    details = {detail for _, detail in answers.values()}
    assert statuses == {409}, answers  # was: 502 each
    assert len(details) == 1, answers  # was: one story per port
    (detail,) = details
    assert not [w for w in TRANSPORT_WORDS if w in detail], detail
    # a port off the static peer's host and off the directory answers the same
    with space.staff() as staff:
        url = f"https://127.0.0.1:{ports['closed']}"
        off = _negotiate(staff, url)
    assert (off.status_code, off.json()["detail"].replace(url, "URL")) == (409, detail)


def test_a_nodes_own_operator_names_any_address_and_reads_what_failed(space: Space) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    with space.net["cellex"].client() as operator:
        failed = _negotiate(operator, url)
    assert failed.status_code == 502, failed.text
    assert "ConnectError" in failed.json()["detail"], failed.text
