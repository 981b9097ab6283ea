"""``qdspace node csr / install / renew``: a member's side of an offline enrollment.

``csr`` makes the member's keys in its directory and the certificate request to hand
the authority (with the enrollment code: ``qdspace authority sign --code``); ``install``
turns the returned certificate, the authority's CA bundle and revocation list into a
ready node directory (as ``qdspace node init`` does locally). ``renew`` makes a new TLS
key (aside) and its request, keeping the signing key, hence the member id;
``install --renew`` swaps the renewed certificate and key in. ``join`` does it all over
the network with the authority service (``node.join``), and ``renew`` goes online when
the node follows a service (``authority_url``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qdspace.node.cli.choices import Role
from qdspace.node.cli.connect import DbUrlOpt
from qdspace.node.cli.errors import clean_errors

console = Console()
DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]
HostOpt = Annotated[
    list[str] | None,
    typer.Option("--hostname", help="a DNS name or IP address for the certificate, repeatable"),
]


def parse_peers(values: list[str]) -> dict[str, str]:
    peers: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep:
            raise typer.BadParameter(f"--peer {value!r}: expected NAME=HOST:PORT")
        peers[name] = address
    return peers


def node_csr(
    directory: DirOpt,
    name: Annotated[str, typer.Option(help="member name, as the enrollment code names it")],
    role: Annotated[Role, typer.Option(help="the role asked")],
    space: Annotated[str, typer.Option(help="name of the data space")],
    hostname: HostOpt = None,
) -> None:
    """Make this member's keys and a certificate request for the authority."""
    from qdspace.node.identity.member import create_member_request

    path = create_member_request(
        directory, space=space, name=name, role=role.value, hostnames=hostname or []
    )
    console.print(f"keys written to {directory} (private, 0600); request: {path}")
    console.print(
        "send the request to the authority (`qdspace authority sign --csr ... --code ...`)",
        soft_wrap=True,
    )


def node_install(
    directory: DirOpt,
    cert: Annotated[Path, typer.Option(help="the certificate the authority issued")],
    ca: Annotated[Path | None, typer.Option(help="the authority's CA certificate (bundle)")] = None,
    crl: Annotated[Path | None, typer.Option(help="the authority's revocation list")] = None,
    renew: Annotated[bool, typer.Option(help="install a renewed certificate")] = False,
    grpc_port: Annotated[int, typer.Option(help="peer gRPC port")] = 7443,
    api_port: Annotated[int, typer.Option(help="operator API port")] = 8443,
    regulator_port: Annotated[int, typer.Option(help="regulator API port")] = 9443,
    db_url: DbUrlOpt = "",
    peer: Annotated[list[str] | None, typer.Option(help="NAME=HOST:PORT, repeatable")] = None,
) -> None:
    """Install the authority's certificate: a ready node directory (or, with --renew, the
    renewed certificate and its new key; restart the node to serve with them)."""
    from qdspace.node.identity.files import read_file
    from qdspace.node.identity.member import install_certificate
    from qdspace.node.init import install_node

    cert_pem = read_file(cert, "certificate")
    if renew:
        ca_pem = read_file(ca, "authority certificate") if ca else None
        if ca_pem is None:
            from qdspace.node.layout import NodeLayout

            ca_pem = read_file(NodeLayout(directory).ca_cert, "authority certificate")
        keys = install_certificate(directory, cert_pem, ca_pem, renew=True)
        ident = keys.identity
        console.print(
            f"renewed certificate of {ident.member_id} installed (serial {ident.serial:x})"
        )
        return
    if ca is None or crl is None:
        raise typer.BadParameter("installing a new member needs --ca and --crl")
    settings = install_node(
        directory,
        cert_pem=cert_pem,
        ca_pem=read_file(ca, "authority certificate"),
        crl_pem=read_file(crl, "revocation list"),
        grpc_port=grpc_port,
        api_port=api_port,
        regulator_port=regulator_port,
        db_url=db_url,
        peers=parse_peers(peer or []),
    )
    console.print(f"node [bold]{settings.name}[/bold] ({settings.role}) ready in {directory}")
    console.print(f"member id {settings.member_id}")


def node_join(
    directory: DirOpt,
    authority_url: Annotated[
        str, typer.Option("--authority-url", help="the authority service, https://HOST[:PORT]")
    ],
    code_file: Annotated[
        Path,
        typer.Option(
            help="a file holding the one-time enrollment code (qdse1....); - reads it from "
            "stdin. Never on the command line: another user of this host could read it "
            "from the process list and enroll first"
        ),
    ],
    hostname: HostOpt = None,
    advertise: Annotated[
        str,
        typer.Option(help="HOST:PORT other members reach this node's gRPC at (directory)"),
    ] = "",
    grpc_host: Annotated[str, typer.Option(help="address the peer gRPC listens on")] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(help="peer gRPC port")] = 7443,
    api_host: Annotated[str, typer.Option(help="address the operator API listens on")] = (
        "127.0.0.1"
    ),
    api_port: Annotated[int, typer.Option(help="operator API port")] = 8443,
    regulator_host: Annotated[
        str, typer.Option(help="address the regulator API listens on")
    ] = "127.0.0.1",
    regulator_port: Annotated[int, typer.Option(help="regulator API port")] = 9443,
    db_url: DbUrlOpt = "",
) -> None:
    """Join a data space with its authority's URL and an enrollment code: keys made here,
    the CA pinned by the code's fingerprint, the certificate issued from a request."""
    if str(code_file) == "-":
        import sys

        code = sys.stdin.readline().strip()
    else:
        from qdspace.node.identity.files import read_file

        code = read_file(code_file, "enrollment code file").decode().strip()
    from qdspace.node.join import join_node

    settings = join_node(
        directory,
        authority_url=authority_url,
        code=code,
        hostnames=hostname or [],
        advertise_peer=advertise,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        api_host=api_host,
        api_port=api_port,
        regulator_host=regulator_host,
        regulator_port=regulator_port,
        db_url=db_url,
    )
    console.print(
        f"joined {settings.space} as [bold]{settings.name}[/bold] ({settings.role}), "
        f"member id {settings.member_id}; node ready in {settings.directory}",
        soft_wrap=True,
    )


def node_renew(directory: DirOpt, hostname: HostOpt = None) -> None:
    """A new TLS key and certificate; the member id stays. Online when node.json names an
    authority_url (restart the node to serve with it), else a request for the authority."""
    from qdspace.node.config import NodeSettings
    from qdspace.node.identity.member import create_renewal_request

    if NodeSettings.load(directory).authority_url:
        from qdspace.node.join import renew_online

        ident = renew_online(directory, hostnames=hostname).identity
        console.print(
            f"renewed certificate of {ident.member_id} installed (serial {ident.serial:x}); "
            "restart the node to serve with it (it publishes the new one then)",
            soft_wrap=True,
        )
        return

    path = create_renewal_request(directory, hostnames=hostname)
    console.print(f"renewal request: {path}; new key waits in {directory}/tls-next.key")
    console.print(
        "the authority signs it with `qdspace authority sign --renew --csr ...`; then "
        "`qdspace node install --renew --cert ...`",
        soft_wrap=True,
    )


def mount(node_app: typer.Typer) -> None:
    node_app.command("csr")(clean_errors(node_csr))
    node_app.command("install")(clean_errors(node_install))
    node_app.command("renew")(clean_errors(node_renew))
    node_app.command("join")(clean_errors(node_join))
