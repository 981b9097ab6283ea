"""Joining a data space over the network, and renewing online: the member side of the
authority service (``qdspace node join``, ``qdspace node renew`` with an authority URL).

A joining member knows two things: the authority service's URL and a one-time
enrollment code. It has no trust anchor yet, so it fetches the CA certificate without
verifying TLS and accepts it only if its sha256 is the fingerprint the code carries
(the code came over another channel: mail, a ticket, a phone call). The answer must be
that one certificate and nothing else, and only the certificate pinned is kept: the
fingerprint was taken of the first PEM block alone, and a second one appended on the way
(someone in between, with a CA of their own) was trusted for the service's TLS, which
sent them the code, and written to the node's trust bundle as a CA trusted to issue member
certificates. From then on every
call is verified against that CA: the code's preview (which name and role it admits),
the enrollment with a certificate request made here (the private keys never leave this
directory), and the node directory is finished by `init.install_node` as for an
offline enrollment, with ``authority_url`` set so the node follows the service.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from qdspace.node.authority.client import AuthorityClient, ca_fingerprint, fetch_ca_unpinned
from qdspace.node.config import (
    DEFAULT_API_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_REGULATOR_PORT,
    NodeSettings,
    check_advertised,
    check_authority_url,
)
from qdspace.node.errors import ConfigError, IdentityError
from qdspace.node.identity.certs import cert_to_pem
from qdspace.node.identity.enrollment import EnrollmentCode
from qdspace.node.identity.files import read_file
from qdspace.node.identity.keyfiles import PLAIN, KeyFiles
from qdspace.node.identity.member import (
    MemberKeys,
    create_member_request,
    create_renewal_request,
    install_certificate,
)
from qdspace.node.init import install_node
from qdspace.node.layout import NodeLayout


class CaPinMismatch(IdentityError):
    """The authority service's CA is not the one the enrollment code names."""


def pinned_ca(authority_url: str, code: EnrollmentCode) -> bytes:
    """The service's CA certificate, if its fingerprint is the code's (else refused): one
    certificate, re-encoded from the one that was pinned (module docstring)."""
    fetched = fetch_ca_unpinned(authority_url)
    try:
        certs = x509.load_pem_x509_certificates(fetched)
    except ValueError:
        raise CaPinMismatch(
            f"the authority at {authority_url} presents no PEM CA certificate: not joining"
        ) from None
    if len(certs) != 1:
        raise CaPinMismatch(
            f"the authority at {authority_url} presents {len(certs)} certificates as its "
            "CA; a data space has one, and only it is pinned: not joining (someone in "
            "between may have added their own)"
        )
    ca_pem = cert_to_pem(certs[0])
    found = ca_fingerprint(ca_pem)
    if found != code.ca_fingerprint:
        raise CaPinMismatch(
            f"the authority at {authority_url} presents CA sha256 {found}, but the "
            f"enrollment code names {code.ca_fingerprint}: not joining (wrong URL, or "
            "someone in between)"
        )
    return ca_pem


def join_node(
    directory: Path,
    *,
    authority_url: str,
    code: str,
    hostnames: Sequence[str] = (),
    advertise_peer: str = "",
    grpc_host: str = DEFAULT_HOST,
    grpc_port: int = DEFAULT_GRPC_PORT,
    api_host: str = DEFAULT_HOST,
    api_port: int = DEFAULT_API_PORT,
    regulator_host: str = DEFAULT_HOST,
    regulator_port: int = DEFAULT_REGULATOR_PORT,
    db_url: str = "",
    key_files: KeyFiles = PLAIN,
) -> NodeSettings:
    """Enroll with the service and create the node directory; nothing is left on failure.
    ``key_files`` writes the private files (a managed host's encrypt them)."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose a new directory for the node")
    try:  # checked before the code is spent
        authority_url = check_authority_url(authority_url)
        check_advertised(advertise_peer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    parsed = EnrollmentCode.parse(code)
    ca_pem = pinned_ca(authority_url, parsed)
    created = not directory.exists()
    try:
        with AuthorityClient(authority_url, ca_pem) as authority:
            admitted = authority.preview(code)
            request = create_member_request(
                directory,
                space=admitted["space"],
                name=admitted["name"],
                role=admitted["role"],
                hostnames=hostnames,
                key_files=key_files,
            )
            enrolled = authority.enroll(code, read_file(request, "certificate request"))
        settings = install_node(
            directory,
            cert_pem=enrolled["cert_pem"].encode(),
            ca_pem=ca_pem,
            crl_pem=enrolled["crl_pem"].encode(),
            grpc_port=grpc_port,
            api_port=api_port,
            regulator_port=regulator_port,
            db_url=db_url,
            key_files=key_files,
        )
    except BaseException:
        _empty(directory, remove=created)
        raise
    joined = settings.model_copy(
        update={
            "authority_url": authority_url,
            "advertise_peer": advertise_peer,
            "grpc_host": grpc_host,
            "api_host": api_host,
            "regulator_host": regulator_host,
        }
    )
    joined.save()
    return joined


def _empty(directory: Path, *, remove: bool) -> None:
    """Undo a failed join: remove what it wrote (the directory too, if it made it)."""
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def renew_online(directory: Path, *, hostnames: Sequence[str] | None = None) -> MemberKeys:
    """A new TLS key and certificate from the authority service; the member id stays.
    A running node serves with the new certificate (and publishes it) after a restart."""
    settings = NodeSettings.load(directory)
    if not settings.authority_url:
        raise ConfigError(f"{settings.layout.config} names no authority_url")
    files = NodeLayout(settings.directory)
    request = create_renewal_request(settings.directory, hostnames=hostnames)
    ca_pem = read_file(files.ca_cert, "authority certificate")
    with AuthorityClient(settings.authority_url, ca_pem) as authority:
        cert_pem = authority.renew(read_file(request, "renewal request"))
    return install_certificate(settings.directory, cert_pem, ca_pem, renew=True)
