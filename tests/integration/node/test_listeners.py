"""A node's three listeners on real processes: TLS everywhere, each on its own port.

The operator API answers only over TLS, with a certificate that chains to the space CA
(or the operator's own, when configured); plain HTTP to it gets no data and the node
stays up. The regulator routes live on the regulator listener alone: absent on the
operator port, present on the regulator port for a valid regulator credential, 401
without one and 401/403 with the operator token. A port already taken is one clear
error and nothing half-started; a ``*_FILE`` variable feeds the database URL, whose
password appears in no log line; a ``*_FILE`` naming a missing file is a clear error.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import make_url

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem, key_to_pem, new_tls_key
from qdspace.node.identity.credential import issue_credential
from qdspace.node.init import init_node
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration

PG_ENV = "QDSPACE_TEST_PG_URL"
PASSPORT = "/v1/regulator/passport"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("listeners"),
        [MemberSpec("cellex", "supplier"), MemberSpec("regulator", "regulator")],
        chain=False,
    )
    network.create()
    try:
        network.start()
        yield network
    finally:
        network.stop()


def peer_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a TLS handshake with ``127.0.0.1:port`` shows (verified by ``context``)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def plain_http(port: int) -> bytes:
    """What a cleartext HTTP request to ``port`` gets back (until the node closes)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/node HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer x\r\n\r\n")
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def qdspace(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def lone_node(tmp_path: Path, **settings: object) -> Path:
    """A node directory of its own (not running), with free ports and ``settings`` set."""
    authority = tmp_path / "authority"
    Authority.init(authority, "lone-space")
    directory = tmp_path / "lone"
    init_node(
        directory,
        authority,
        name="lone",
        role="supplier",
        grpc_port=free_port(),
        api_port=free_port(),
        regulator_port=free_port(),
    )
    config = NodeLayout(directory).config
    config.write_text(json.dumps({**json.loads(config.read_text()), **settings}))
    return directory


def test_the_operator_api_answers_only_tls_with_a_certificate_of_the_space_ca(
    net: LocalNetwork, tmp_path: Path
) -> None:
    cellex = net["cellex"]
    runtime = json.loads(cellex.layout.runtime.read_text())
    assert runtime["api"] == cellex.api_url and cellex.api_url.startswith("https://")
    assert runtime["ca_file"] == str(cellex.ca_file)
    trusted = ssl.create_default_context(cafile=cellex.ca_file)  # chain and hostname checked
    cert = peer_certificate(cellex.api_port, trusted)
    member_id = cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value
    assert member_id == runtime["member_id"]
    # another data space's CA vouches for nothing here
    other = Authority.init(tmp_path / "other", "other-space")
    stranger = ssl.create_default_context(cadata=cert_to_pem(other.cert).decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_certificate(cellex.api_port, stranger)
    # cleartext HTTP to the TLS port: no HTTP answer, no data, and the node stays up
    for _ in range(3):
        answer = plain_http(cellex.api_port)
        assert b"HTTP/1." not in answer and b"member_id" not in answer, answer[:200]
    with pytest.raises(httpx.HTTPError):
        httpx.get(cellex.api_url.replace("https://", "http://") + "/healthz", timeout=5)
    assert cellex.running
    with cellex.client() as operator:
        assert operator.get("/v1/node").json()["member_id"] == member_id


def test_regulator_routes_live_on_the_regulator_listener_only(net: LocalNetwork) -> None:
    cellex = net["cellex"]
    member_id = json.loads(cellex.layout.runtime.read_text())["member_id"]
    credential = issue_credential(net["regulator"].keys(), member_id)
    # the operator listener: no regulator route, whoever asks
    with cellex.client() as operator:
        assert operator.get(PASSPORT).status_code == 404
    with cellex.client(token=credential) as regulator_on_operator_port:
        assert regulator_on_operator_port.get(PASSPORT).status_code == 401
        assert regulator_on_operator_port.get("/v1/node").status_code == 401
    # the regulator listener: the routes, for a regulator credential only
    with cellex.regulator_client(credential) as regulator:
        answer = regulator.get(PASSPORT)  # past the credential: this node anchors nowhere
        assert answer.status_code == 503 and "anchors to no chain" in answer.json()["detail"]
        assert regulator.get("/v1/node").status_code == 404  # no operator route here
        assert regulator.get("/metrics").status_code == 404  # metrics: operator listener
    with cellex.regulator_client() as anonymous:
        assert anonymous.get(PASSPORT).status_code == 401
        assert anonymous.get("/healthz").json()["member_id"] == member_id  # the audience
    with cellex.regulator_client(cellex.token) as operator_on_regulator_port:
        assert operator_on_regulator_port.get(PASSPORT).status_code in (401, 403)
        assert operator_on_regulator_port.get("/v1/node").status_code in (401, 403)
    other_audience = issue_credential(net["regulator"].keys(), "someone-else")
    with cellex.regulator_client(other_audience) as misaddressed:
        assert misaddressed.get(PASSPORT).status_code == 403
    # the regulator listener presents the member certificate of the space CA too
    trusted = ssl.create_default_context(cafile=cellex.ca_file)
    assert peer_certificate(cellex.regulator_port, trusted).subject.rfc4514_string()


def test_each_listener_has_its_own_port(net: LocalNetwork) -> None:
    cellex = net["cellex"]
    runtime = json.loads(cellex.layout.runtime.read_text())
    assert runtime["grpc"] == cellex.grpc_address
    assert runtime["api"] == cellex.api_url
    assert runtime["regulator"] == cellex.regulator_url
    assert runtime["regulator_ca_file"] == str(cellex.ca_file)
    ports = {cellex.grpc_port, cellex.api_port, cellex.regulator_port}
    assert len(ports) == 3
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


@pytest.mark.parametrize("taken", ["api_port", "regulator_port", "grpc_port"])
def test_a_taken_port_is_one_clear_error_and_nothing_starts(tmp_path: Path, taken: str) -> None:
    directory = lone_node(tmp_path)
    settings = json.loads(NodeLayout(directory).config.read_text())
    port = settings[taken]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        started = qdspace("node", "start", "--dir", str(directory))
        # the other two ports were released: they bind again at once
        for other in {"api_port", "regulator_port", "grpc_port"} - {taken}:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", settings[other]))
    assert started.returncode == 1, started.stderr
    errors = [line for line in started.stderr.splitlines() if line.startswith("error:")]
    assert errors == [started.stderr.strip().splitlines()[-1]], started.stderr  # one, last
    assert errors[0].startswith("error: cannot bind") and str(port) in errors[0]
    assert not NodeLayout(directory).runtime.exists()  # nothing half-started


def test_a_missing_secret_file_is_one_clear_error(tmp_path: Path) -> None:
    directory = lone_node(tmp_path)
    missing = tmp_path / "no-such-secret"
    started = qdspace(
        "node", "start", "--dir", str(directory), env={"QDSPACE_DB_URL_FILE": str(missing)}
    )
    assert started.returncode == 1, started.stderr
    assert started.stderr.strip().splitlines() == [
        f"error: $QDSPACE_DB_URL_FILE names {missing}, which does not exist"
    ]


def test_the_database_url_from_a_file_and_its_password_in_no_log(tmp_path: Path) -> None:
    pg_url = os.environ.get(PG_ENV)
    if not pg_url:
        pytest.skip(f"needs {PG_ENV}=postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
    secret = tmp_path / "db_url"
    network = LocalNetwork(
        tmp_path / "pg",
        [MemberSpec("pgnode", "supplier")],
        chain=False,
        pg_url=pg_url,
        env={"QDSPACE_DB_URL_FILE": str(secret)},
    )
    try:
        network.create()
        member = network["pgnode"]
        secret.write_text(member.pg_url + "\n")
        secret.chmod(0o600)
        config = member.layout.config
        config.write_text(json.dumps({**json.loads(config.read_text()), "db_url": ""}))
        network.start()
        with member.operator() as operator:
            database = operator.node()["database"]
        assert database.startswith("postgresql") and ":***@" in database, database
    finally:
        network.stop()
        network.drop_databases()
    password = make_url(member.pg_url).password
    assert password
    log = member.log_path.read_text(errors="replace") + member.layout.node_log.read_text(
        errors="replace"
    )
    assert "database postgresql" in log and ":***@" in log
    assert f":{password}@" not in log and f"password={password}" not in log


def test_an_operator_provided_certificate_is_served_on_the_operator_api(tmp_path: Path) -> None:
    corporate = Authority.init(tmp_path / "corporate-ca", "corporate")
    key = new_tls_key()
    from nacl.signing import SigningKey

    from qdspace.node.identity.csr import build_request

    request = build_request(
        space="corporate", name="api", role="supplier", tls_key=key,
        signing_key=SigningKey.generate(),
    )  # fmt: skip
    cert = corporate.sign_request(request, approve_name="api", approve_role="supplier")
    (tmp_path / "api.crt").write_bytes(cert_to_pem(cert))
    (tmp_path / "api.key").write_bytes(key_to_pem(key))
    directory = lone_node(
        tmp_path,
        api_tls_cert_file=str(tmp_path / "api.crt"),
        api_tls_key_file=str(tmp_path / "api.key"),
    )
    layout = NodeLayout(directory)
    layout.logs.mkdir(exist_ok=True)
    with layout.process_log.open("ab") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(directory)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not layout.runtime.exists():
            assert node.poll() is None, layout.process_log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.1)
        runtime = json.loads(layout.runtime.read_text())
        assert runtime["ca_file"] is None  # the client brings the operator's CA
        api_port = int(runtime["api"].rpartition(":")[2])
        regulator_port = int(runtime["regulator"].rpartition(":")[2])
        ours = ssl.create_default_context(cadata=cert_to_pem(corporate.cert).decode())
        served = peer_certificate(api_port, ours)
        assert served.fingerprint(cert.signature_hash_algorithm) == cert.fingerprint(  # type: ignore[arg-type]
            cert.signature_hash_algorithm  # type: ignore[arg-type]
        )
        space = ssl.create_default_context(cafile=layout.ca_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            peer_certificate(api_port, space)
        assert peer_certificate(regulator_port, space)  # the regulator API: member cert
    finally:
        node.terminate()
        assert node.wait(30) == 0
