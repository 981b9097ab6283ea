"""The authority service's HTTP routes: decode, call the service, encode (no logic here).

Every route is open: what it hands out is public (the CA certificate, the CRL, the
signed directory) or is authorised by what the request carries (an enrollment code, a
CSR with a proof of possession of the member's signing key, an entry signed by that
key). The gates in front are the node API's own (`node.api.gate`): bodies are capped
at `BODY_LIMIT` before they are read and JSON nesting before it is parsed; every
error is an RFC 9457 problem by the fault table (`node.api.problems`), 4xx for the
caller's mistakes, never a traceback. Enrollment and renewal are counted per client
address and per its network (`node.authority.attempts`): an address or network over its
budget of refusals gets a 429 problem with Retry-After.

The client address is the connection's, unless the operator named the peer a trusted
proxy (`node.authority.forwarded`): then it is read from the proxy's X-Forwarded-For,
and a malformed one is a 400 problem. By default no proxy is trusted and the header is
ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from qdspace.node.api.gate import BodyLimit, JsonDepthLimit
from qdspace.node.api.problems import install_problem_handlers, problem_response
from qdspace.node.authority.attempts import client_key
from qdspace.node.authority.forwarded import HEADER, NO_PROXIES, TrustedProxies
from qdspace.node.authority.service import AuthorityService, PublishedTooOften, TooManyAttempts
from qdspace.node.identity.certs import cert_to_pem, identity_of

#: the largest request body any route reads (a CSR or an entry and its certificate)
BODY_LIMIT = 64 * 1024
PEM_MEDIA = "application/x-pem-file"
PemText = Annotated[str, Field(min_length=1, max_length=16 * 1024)]
CodeText = Annotated[str, Field(min_length=1, max_length=512)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishRequest(Strict):
    """A member's signed directory entry and the certificate it describes."""

    entry: dict[str, Any]
    cert_pem: PemText


class PreviewRequest(Strict):
    code: CodeText


class Preview(BaseModel):
    """What an enrollment code admits: the joining member checks it before making keys."""

    name: str
    role: str
    space: str


class EnrollRequest(Strict):
    code: CodeText
    csr_pem: PemText


class Enrolled(BaseModel):
    cert_pem: str
    ca_pem: str
    crl_pem: str
    member_id: str


class RenewRequest(Strict):
    csr_pem: PemText


class Renewed(BaseModel):
    cert_pem: str


class Published(BaseModel):
    serial: int = Field(description="the directory's serial that includes the entry")


class Health(BaseModel):
    status: str
    space: str


async def _too_many(request: Request, exc: Exception) -> JSONResponse:
    """A 429 problem with the seconds until the caller may try again."""
    assert isinstance(exc, TooManyAttempts | PublishedTooOften)
    return problem_response(
        429, str(exc), request.url.path, headers={"Retry-After": str(exc.retry_after_s)}
    )


def create_authority_app(
    service: AuthorityService, proxies: TrustedProxies = NO_PROXIES
) -> FastAPI:
    """The FastAPI app of ``qdspace authority serve`` over ``service``, reading the
    caller's address from the X-Forwarded-For of ``proxies`` only (module)."""

    def _client(request: Request) -> str:
        """The address the caller's attempts are counted by (`attempts.client_key`)."""
        peer = request.client.host if request.client else None
        return client_key(proxies.client(peer, request.headers.getlist(HEADER)))

    app = FastAPI(
        title="qdspace authority",
        summary="CA, revocation list, enrollment and member directory of a data space",
        docs_url=None,  # FastAPI's doc pages load a CDN's script; the schema stays
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_exception_handler(TooManyAttempts, _too_many)
    app.add_exception_handler(PublishedTooOften, _too_many)
    app.add_middleware(JsonDepthLimit)
    app.add_middleware(BodyLimit, default=BODY_LIMIT)
    app.state.authority = service

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok", space=service.space)

    @app.get("/v1/ca.pem", response_class=Response)
    def ca_pem() -> Response:
        """The data space's CA certificate (a joining member pins its sha256)."""
        return Response(service.ca_pem(), media_type=PEM_MEDIA)

    @app.get("/v1/crl.pem", response_class=Response)
    def crl_pem() -> Response:
        """The revocation list; re-issued when less than half its validity is left."""
        return Response(service.crl_pem(), media_type=PEM_MEDIA)

    @app.post("/v1/enrollment/preview")
    def preview(body: PreviewRequest, request: Request) -> Preview:
        """The name and role an enrollment code admits (the code is not spent)."""
        name, role = service.preview(body.code, _client(request))
        return Preview(name=name, role=role, space=service.space)

    @app.post("/v1/enrollment")
    def enroll(body: EnrollRequest, request: Request) -> Enrolled:
        """Certify a joining member's request (PKCS#10), admitted by its one-time code."""
        cert = service.enroll(body.code, body.csr_pem, _client(request))
        return Enrolled(
            cert_pem=cert_to_pem(cert).decode(),
            ca_pem=service.ca_pem().decode(),
            crl_pem=service.crl_pem().decode(),
            member_id=identity_of(cert).member_id,
        )

    @app.post("/v1/renewal")
    def renew(body: RenewRequest, request: Request) -> Renewed:
        """A new certificate for a member's new TLS key while its certificate is valid
        (request signed by its key)."""
        cert = service.renew(body.csr_pem, _client(request))
        return Renewed(cert_pem=cert_to_pem(cert).decode())

    @app.get("/v1/directory")
    def directory() -> JSONResponse:
        """The signed member directory (`qdspace.node.identity.directory`)."""
        return JSONResponse(service.document().to_json())

    @app.post("/v1/directory/entries")
    def publish(body: PublishRequest, request: Request) -> Published:
        """A member publishes (or replaces) its own entry, signed with its key."""
        document = service.publish(body.entry, body.cert_pem, _client(request))
        return Published(serial=document.serial)

    return app
