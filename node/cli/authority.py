"""``qdspace authority ...``: the data space's CA on the operator's own machine.

``init`` creates it, ``enroll`` makes a one-time code for a joining member (``cancel``
withdraws one not yet redeemed: a name has one code waiting at a time), ``sign`` turns
a member's certificate request into its certificate (admitted by a code, or by the
operator naming the member and role; ``--renew`` for a known member's new key), ``revoke``
and ``crl`` keep the revocation list, ``attest`` records the framework agreements a member
signed (the service signs them into its directory), ``list`` shows what was issued. The
authority never sees a member's private key: everything it signs arrives as a request
(``qdspace node csr``).
A number out of bounds (a code's lifetime, a CRL's validity: ``inf``, ``nan``, ``1e10``
days, a CRL stale before it is copied) is refused as a one-line error, exit code 2.
The authority service (``qdspace authority serve``) offers the same over HTTPS.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.authority.forwarded import TRUSTED_PROXIES_ENV, TrustedProxies
from qdspace.node.cli.choices import Role
from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors, fail

authority_app = typer.Typer(no_args_is_help=True, help="the data space's authority (CA)")
console = Console()

AuthDirOpt = Annotated[Path, typer.Option("--dir", help="authority directory")]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
#: the environment variable of ``serve --allow-local-endpoints``
LOCAL_ENDPOINTS_ENV = "QDSPACE_AUTHORITY_ALLOW_LOCAL_ENDPOINTS"
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the exit code of a bad number on the command line (click's for a bad parameter)
USAGE_EXIT = 2


def parse_duration(text: str, what: str, most: dt.timedelta) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``: more than nothing and at most ``most`` (a longer
    one overflowed `datetime.timedelta` into a traceback), else a one-line error."""
    match = _DURATION.match(text.strip())
    text = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}"
    if match is None:
        raise fail(f"{what} {text!r}: expected a number and s, m, h or d (e.g. 24h)", USAGE_EXIT)
    seconds = float(match[1]) * _UNIT_S[match[2]]
    if not 0 < seconds <= most.total_seconds():
        raise fail(f"{what} {text!r}: more than 0 s and at most {_days(most)} days", USAGE_EXIT)
    return dt.timedelta(seconds=seconds)


def _days(span: dt.timedelta) -> str:
    return f"{span.total_seconds() / 86400:g}"


@authority_app.command("init")
@clean_errors
def authority_init(
    directory: AuthDirOpt,
    space: Annotated[str, typer.Option(help="name of the data space")] = "qdspace",
) -> None:
    """Create the data space's certificate authority."""
    from qdspace.node.identity.authority import Authority
    from qdspace.node.identity.certs import fingerprint

    auth = Authority.init(directory, space)
    console.print(f"authority for [bold]{space}[/bold] created in {directory}")
    console.print(f"CA fingerprint (sha256): {fingerprint(auth.cert)}")


@authority_app.command("enroll")
@clean_errors
def authority_enroll(
    directory: AuthDirOpt,
    name: Annotated[str, typer.Option(help="the joining member's name")],
    role: Annotated[Role, typer.Option(help="the role it is granted")],
    ttl: Annotated[str, typer.Option(help="how long the code is valid (30m, 24h, 7d)")] = "24h",
    bpn: Annotated[str | None, typer.Option(help="business partner number (optional)")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="write the code to this new file (0600) instead of printing it"),
    ] = None,
) -> None:
    """Make a one-time enrollment code for a member; it is shown once."""
    from qdspace.node.identity.authority import Authority
    from qdspace.node.identity.enrollment import MAX_TTL

    lifetime = parse_duration(ttl, "--ttl", MAX_TTL)
    authority = Authority.load(directory)
    if out is not None and out.exists():
        raise typer.BadParameter(f"{out} exists; an enrollment code is written to a new file")
    code = authority.create_enrollment(name=name, role=role.value, ttl=lifetime, bpn=bpn)
    if out is not None:
        from qdspace.util.files import write_atomic

        write_atomic(out, f"{code}\n".encode(), mode=0o600)
        console.print(
            f"enrollment code {code.code_id} for [bold]{name}[/bold] ({role.value}), valid "
            f"{ttl}, written to {out}; hand it to the member (`qdspace node join --code-file`)",
            soft_wrap=True,
        )
        return
    console.print(
        f"enrollment code {code.code_id} for [bold]{name}[/bold] ({role.value}), valid {ttl}, "
        "for one certificate. It is not stored and will not be shown again:",
        soft_wrap=True,
    )
    print(str(code))


@authority_app.command("cancel")
@clean_errors
def authority_cancel(
    directory: AuthDirOpt,
    code: Annotated[
        str | None, typer.Option(help="the code to cancel: its id (16 hex) or the whole code")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="cancel every code waiting for this member name")
    ] = None,
) -> None:
    """Cancel an enrollment code not yet redeemed (a name has one waiting at a time)."""
    from qdspace.node.identity.authority import Authority

    if (code is None) == (name is None):
        raise fail("give --code or --name (one of them)", USAGE_EXIT)
    for entry in Authority.load(directory).cancel_enrollment(code=code, name=name):
        console.print(
            f"cancelled enrollment code {entry.code_id} for [bold]{entry.name}[/bold] "
            f"({entry.role}, valid until {entry.expires_at})",
            soft_wrap=True,
        )


@authority_app.command("sign")
@clean_errors
def authority_sign(
    directory: AuthDirOpt,
    csr: Annotated[Path, typer.Option(help="the member's request (qdspace node csr)")],
    out: Annotated[Path, typer.Option(help="where to write the certificate (PEM)")],
    code: Annotated[
        str | None, typer.Option(help="the enrollment code the member was given")
    ] = None,
    name: Annotated[str | None, typer.Option(help="approve this member name (no code)")] = None,
    role: Annotated[Role | None, typer.Option(help="approve this role (no code)")] = None,
    renew: Annotated[bool, typer.Option(help="a known member's renewal (same id)")] = False,
) -> None:
    """Issue a member's certificate from its request (--code, --name/--role, or --renew).

    A new member is admitted by its enrollment code, or by the operator approving the name
    and role; --renew certifies a known member's new TLS key (same member id)."""
    from qdspace.node.identity.authority import Authority
    from qdspace.node.identity.certs import cert_to_pem, identity_of
    from qdspace.node.identity.files import read_file
    from qdspace.util.files import write_atomic

    if renew and (code or name or role):
        raise typer.BadParameter("--renew takes no --code, --name or --role")
    if not renew and (code is None) == (name is None and role is None):
        raise typer.BadParameter("give --code, or --name and --role")
    if not renew and code is None and (name is None or role is None):
        raise typer.BadParameter("approving without a code needs both --name and --role")
    authority = Authority.load(directory)
    request = read_file(csr, "certificate request")
    if renew:
        cert = authority.renew(request)
    else:
        cert = authority.sign_request(
            request, code=code, approve_name=name, approve_role=role.value if role else None
        )
    write_atomic(out, cert_to_pem(cert), mode=0o644)
    ident = identity_of(cert)
    console.print(
        f"certificate for [bold]{ident.name}[/bold] ({ident.role}, {ident.member_id}) "
        f"written to {out}; give the member it, {authority.files.ca_cert} and "
        f"{authority.files.crl} (`qdspace node install`)",
        soft_wrap=True,
    )


@authority_app.command("revoke")
@clean_errors
def authority_revoke(
    directory: AuthDirOpt,
    member: Annotated[str, typer.Option(help="member name or id")],
    reason: Annotated[str, typer.Option(help="why")] = "unspecified",
) -> None:
    """Revoke a member; nodes refuse it from their next call on."""
    from qdspace.node.identity.authority import Authority

    for m in Authority.load(directory).revoke(member, reason):
        console.print(f"revoked {m.name} ({m.member_id}, serial {m.serial})")


@authority_app.command("attest")
@clean_errors
def authority_attest(
    directory: AuthDirOpt,
    member: Annotated[str, typer.Option(help="member name or id")],
    framework: Annotated[
        list[str] | None,
        typer.Option(
            help="a framework agreement it signed, as DataExchangeGovernance:1.0 (repeatable)"
        ),
    ] = None,
    withdraw: Annotated[
        list[str] | None,
        typer.Option(help="a framework agreement it no longer holds (repeatable)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Attest the framework agreements a member signed; providers whose access policies
    name one (``FrameworkAgreement``) read them from the signed directory."""
    from qdspace.node.identity.authority import Authority

    if not framework and not withdraw:
        raise typer.BadParameter("name a --framework to attest or one to --withdraw")
    row = Authority.load(directory).attest(member, add=framework or (), withdraw=withdraw or ())
    if as_json:
        print_json({"member_id": row.member_id, "name": row.name, "frameworks": row.frameworks})
        return
    held = ", ".join(row.frameworks) or "none"
    console.print(
        f"{row.name} ({row.member_id}) holds framework agreements: {held}. The authority "
        "service signs them into its next directory; nodes take it at their next refresh.",
        soft_wrap=True,
    )


@authority_app.command("crl")
@clean_errors
def authority_crl(
    directory: AuthDirOpt,
    valid_days: Annotated[
        float, typer.Option(help="days until its nextUpdate (1 hour to 90 days)")
    ] = 7.0,
) -> None:
    """Re-issue the revocation list; nodes refuse every call once theirs is past nextUpdate."""
    from qdspace.node.identity.admission import span
    from qdspace.node.identity.authority import CRL_MAX_VALID, CRL_MIN_VALID, Authority

    least, most = CRL_MIN_VALID.total_seconds() / 86400, CRL_MAX_VALID.total_seconds() / 86400
    if not (math.isfinite(valid_days) and least <= valid_days <= most):
        raise fail(
            f"--valid-days {valid_days:g}: a revocation list is valid for {span(CRL_MIN_VALID)} "
            f"to {span(CRL_MAX_VALID)} (one stale when it reaches the nodes makes them refuse "
            "every call)",
            USAGE_EXIT,
        )
    path = Authority.load(directory).issue_crl(dt.timedelta(days=valid_days))
    console.print(f"revocation list re-issued: {path} (valid {valid_days:g} days)")
    console.print("nodes whose crl_path is this file reload it; copy it to the others")


@authority_app.command("list")
@clean_errors
def authority_list(directory: AuthDirOpt, as_json: JsonOpt = False) -> None:
    """List issued member certificates."""
    from dataclasses import asdict

    from qdspace.node.identity.authority import Authority

    issued = Authority.load(directory).members()
    if as_json:
        print_json([asdict(m) for m in issued])
        return
    table = Table("name", "member id", "role", "serial", "valid until", "revoked", "frameworks")
    for m in issued:
        frameworks = ", ".join(m.frameworks)
        table.add_row(
            m.name, m.member_id, m.role, m.serial, m.not_after, m.revoked_at or "", frameworks
        )
    console.print(table)


@authority_app.command("serve")
@clean_errors
def authority_serve(
    directory: AuthDirOpt,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port (0: any free port)")] = 8600,
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            help="DNS name or IP members reach the service at (repeatable; its TLS "
            "certificate names them; default localhost and 127.0.0.1)"
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            envvar=TRUSTED_PROXIES_ENV,
            show_envvar=True,
            help="address or network (CIDR) of a reverse proxy in front of the service "
            "(repeatable; in the environment variable, separated by spaces). From these "
            "peers only, a caller's address is read from X-Forwarded-For: the right-most "
            "address that is not itself a trusted proxy; a malformed header from one is "
            "answered 400. Default: none, the header is ignored and callers are counted "
            "by the address they connect from (behind an unnamed proxy, all share its "
            "budget of refused attempts)",
        ),
    ] = None,
    allow_local_endpoints: Annotated[
        bool,
        typer.Option(
            "--allow-local-endpoints",
            envvar=LOCAL_ENDPOINTS_ENV,
            show_envvar=True,
            help="take members' directory entries that name loopback or private (RFC 1918, "
            "unique local) addresses: a data space on one machine or one LAN (demo, tests). "
            "Default: refused, as link-local addresses always are (every node following the "
            "directory would dial them on its own machine or network)",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Serve the CA certificate, CRL, enrollment and the signed member directory over HTTPS.

    Refused enrollment attempts have a budget per caller address (IPv6: per /64).
    They have one per network too (IPv4: /24, IPv6: /48); over either, 429 and Retry-After.
    """
    from qdspace.node.authority.server import serve_authority
    from qdspace.node.authority.tls import DEFAULT_HOSTNAMES
    from qdspace.node.logs import setup_logging

    proxies = TrustedProxies.parse(trusted_proxy or ())
    setup_logging(log_level)
    names = hostname or ([host, *DEFAULT_HOSTNAMES] if host not in ("0.0.0.0", "::") else [])
    serve_authority(
        directory,
        host,
        port,
        names or list(DEFAULT_HOSTNAMES),
        proxies,
        allow_local_endpoints=allow_local_endpoints,
    )
