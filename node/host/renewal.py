"""Renewing a hosted tenant's member certificate (``qdspace host tenant renew``).

A member certificate is valid for 825 days; a self-hosted node renews its own (``node
renew``: a new TLS key, a request signed with the same Ed25519 key, so the member id
stays). A tenant's keys are sealed (`node.host.sealing`) and it has no operator of its
own on the host's machine, so the host renews it: the new TLS key is written sealed
(`identity.member.create_renewal_request` through the tenant's key files), the
authority signs the request (the authority's directory on this machine, or the
authority service's renewal endpoint for a tenant that joined by URL), and the
certificate is installed as a node's is, certificate first, then the key, so a crash in
between is completed at the next load. A running host then opens the tenant again
(`HostRuntime.reopen`), which serves, and publishes in the directory, the new
certificate; the other tenants are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qdspace.node.errors import ConfigError
from qdspace.node.host.config import HostLayout
from qdspace.node.host.registry import Registry
from qdspace.node.host.tenants import TenantSettings, load_master_key, tenant_key_files
from qdspace.node.identity.files import read_file
from qdspace.node.identity.member import create_renewal_request, install_certificate
from qdspace.node.layout import NodeLayout


@dataclass(frozen=True)
class Renewed:
    """What changed: the same member, a new certificate."""

    name: str
    member_id: str
    serial: int
    not_after: str


def renew_tenant(directory: Path, name: str, authority_dir: Path | None = None) -> Renewed:
    """A new TLS key and certificate for tenant ``name``; its member id stays. Signed by
    the authority in ``authority_dir`` (on this machine) or, without it, by the service
    the tenant's settings name (``authority_url``)."""
    files = HostLayout(directory.resolve())
    Registry(files.directory).get(name)  # an unknown tenant is refused first
    target = files.tenant(name)
    settings = TenantSettings.load(target)  # its authority_url, not the shell's
    if authority_dir is None and not settings.authority_url:
        raise ConfigError(
            f"tenant {name} did not join through an authority service: give the "
            "authority's directory (--authority)"
        )
    key_files = tenant_key_files(files, load_master_key(files), name)
    request = read_file(create_renewal_request(target, key_files=key_files), "renewal request")
    ca_pem = read_file(NodeLayout(target).ca_cert, "authority certificate")
    if authority_dir is not None:
        from qdspace.node.identity.authority import Authority
        from qdspace.node.identity.certs import cert_to_pem

        cert_pem = cert_to_pem(Authority.load(authority_dir).renew(request))
    else:
        from qdspace.node.authority.client import AuthorityClient

        with AuthorityClient(settings.authority_url, ca_pem) as service:
            cert_pem = service.renew(request)
    keys = install_certificate(target, cert_pem, ca_pem, renew=True, key_files=key_files)
    return Renewed(
        name,
        keys.identity.member_id,
        keys.identity.serial,
        keys.cert.not_valid_after_utc.isoformat(),
    )
