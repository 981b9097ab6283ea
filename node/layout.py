"""Every file and folder name of a node directory, written down once.

A node directory is the whole of a member on disk: ``qdspace node init`` creates it,
``qdspace node start`` serves from it, the CLI and the demo read what the node wrote
into it. Before this module its names were spelled in eight places (settings, init,
the runtime, the CLI, the API, the demo's local network...), so renaming one file
meant a grep and a hope. Now every module in ``node/`` asks a :class:`NodeLayout` (or
an :class:`AuthorityLayout` for the authority's directory) for a path, and the tree
below is the one place that says what lives where::

    DIR/
    ├── node.json              settings (NodeSettings; QDSPACE_* variables override)
    ├── node.db                the SQLite store, when no db_url is configured
    ├── operator.token         bearer token of the operator API (0600)
    ├── signing.key            Ed25519 seed, hex (0600)
    ├── tls.key / tls.crt      the member's TLS key (0600) and authority-issued cert
    ├── ca.crt                 the authority's certificate (trust anchor), optionally
    │                          followed by other CAs trusted to issue member certificates
    ├── request.csr            the certificate request of an enrollment or renewal
    ├── tls-next.key           a renewal's new TLS key until its certificate is installed
    ├── crl.pem                the authority's revocation list (``node install`` copies it,
    │                          the authority service's follower refreshes it)
    ├── directory.json         the last verified member directory (authority service)
    ├── contract.kek           key-encryption key of the contract store (0600)
    ├── pseudonym.secret       secret behind the pseudonyms given to peers (0600)
    ├── ledger.json            chain settings, when the node anchors (optional)
    ├── chain.key              the node's chain account key (optional, 0600)
    ├── logs/
    │   ├── node.log           the node's own log
    │   └── process.log        stdout/stderr of a node started by localnet (rotated
    │                          by the node like node.log: node.logs)
    ├── run/                   present while the node runs
    │   ├── runtime.json       pid, listener URLs (https) and CA file; removed on stop
    │   └── contract-clock.json  the contract clock's offset (tests, the demo)
    ├── models/                model registry (owned by qdspace.inference.registry:
    │                          <sha256>.onnx, manifest.json, audit.npz, gate.json)
    ├── inspection/
    │   ├── drift.json         FPR/FNR drift state of the line
    │   ├── line.json          the running line's status and history (node.runtime.line_status)
    │   ├── split-<member>.json  train/val/test split manifest of a member's cells
    │   └── explanations/<version>/  misjudgment heatmaps (index.json: inference.explain)
    └── federation/
        ├── jobs/<job_id>/     a coordinated job (job.json, checkpoint.bin, version.json:
        │                      owned by qdspace.federation.job_files)
        ├── data/<job_id>.npz  a member's training share for a job (the demo writes it)
        └── releases/<coordinator>/<job_id>.json  the updates this member sent a job,
                               counted against its floor (node.runtime.federation_releases)

    AUTHORITY/
    ├── ca.key / ca.crt        the authority's key (0600) and self-signed certificate
    ├── members.json           the register of issued member certificates
    ├── enrollments.json       the book of enrollment codes (hashes of their secrets)
    ├── authority.lock         held while the register or the book is rewritten
    ├── crl.pem                the revocation list every node reloads
    ├── directory.json         the signed member directory (`authority serve`)
    ├── server.key / server.crt  the authority service's TLS key (0600) and certificate
    └── run/authority.json     pid and URL of a running `authority serve`

Received data, outbox messages and contract state live in the store (``node.db`` or
PostgreSQL), not in folders. The lower packages (inference, federation, ledger) own
the names inside the folders they manage and never import ``node``; this module
names those folders only. It imports nothing but the standard library, so the light
CLI client can use it without loading the server stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "node.json"
DATABASE_FILE = "node.db"
OPERATOR_TOKEN_FILE = "operator.token"
SIGNING_KEY_FILE = "signing.key"
TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"
CA_CERT_FILE = "ca.crt"
REQUEST_FILE = "request.csr"
NEXT_TLS_KEY_FILE = "tls-next.key"
KEK_FILE = "contract.kek"
PSEUDONYM_FILE = "pseudonym.secret"
LEDGER_FILE = "ledger.json"
CHAIN_KEY_FILE = "chain.key"
LOGS_DIR = "logs"
NODE_LOG_FILE = "node.log"
PROCESS_LOG_FILE = "process.log"
RUN_DIR = "run"
RUNTIME_FILE = "runtime.json"
CLOCK_FILE = "contract-clock.json"
MODELS_DIR = "models"  # the same name as qdspace.inference.registry.MODELS_DIR (tested)
INSPECTION_DIR = "inspection"
DRIFT_FILE = "drift.json"
LINE_STATUS_FILE = "line.json"
EXPLANATIONS_DIR = "explanations"
FEDERATION_DIR = "federation"
JOBS_DIR = "jobs"
DATA_DIR = "data"

CA_KEY_FILE = "ca.key"
MEMBERS_FILE = "members.json"
CRL_FILE = "crl.pem"
DIRECTORY_FILE = "directory.json"
SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.crt"
AUTHORITY_RUNTIME_FILE = "authority.json"
ENROLLMENTS_FILE = "enrollments.json"
LOCK_FILE = "authority.lock"


@dataclass(frozen=True)
class NodeLayout:
    """The paths of the node directory ``directory`` (see the module's tree)."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / CONFIG_FILE

    @property
    def database(self) -> Path:
        return self.directory / DATABASE_FILE

    @property
    def sqlite_url(self) -> str:
        """The SQLAlchemy URL of the default store."""
        return f"sqlite:///{self.database}"

    @property
    def operator_token(self) -> Path:
        return self.directory / OPERATOR_TOKEN_FILE

    @property
    def signing_key(self) -> Path:
        return self.directory / SIGNING_KEY_FILE

    @property
    def tls_key(self) -> Path:
        return self.directory / TLS_KEY_FILE

    @property
    def tls_cert(self) -> Path:
        return self.directory / TLS_CERT_FILE

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def request(self) -> Path:
        return self.directory / REQUEST_FILE

    @property
    def next_tls_key(self) -> Path:
        return self.directory / NEXT_TLS_KEY_FILE

    @property
    def crl(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def contract_kek(self) -> Path:
        return self.directory / KEK_FILE

    @property
    def pseudonym_secret(self) -> Path:
        return self.directory / PSEUDONYM_FILE

    @property
    def ledger(self) -> Path:
        return self.directory / LEDGER_FILE

    @property
    def chain_key(self) -> Path:
        return self.directory / CHAIN_KEY_FILE

    @property
    def member_directory(self) -> Path:
        """The last member directory the node fetched and verified."""
        return self.directory / DIRECTORY_FILE

    @property
    def logs(self) -> Path:
        return self.directory / LOGS_DIR

    @property
    def node_log(self) -> Path:
        return self.logs / NODE_LOG_FILE

    @property
    def process_log(self) -> Path:
        return self.logs / PROCESS_LOG_FILE

    @property
    def run(self) -> Path:
        return self.directory / RUN_DIR

    @property
    def runtime(self) -> Path:
        return self.run / RUNTIME_FILE

    @property
    def contract_clock(self) -> Path:
        return self.run / CLOCK_FILE

    @property
    def models(self) -> Path:
        """The model registry's folder (its contents belong to ``inference.registry``)."""
        return self.directory / MODELS_DIR

    @property
    def inspection(self) -> Path:
        return self.directory / INSPECTION_DIR

    @property
    def drift(self) -> Path:
        return self.inspection / DRIFT_FILE

    @property
    def line_status(self) -> Path:
        """The inspection line's status, written by its process (`runtime.line_status`)."""
        return self.inspection / LINE_STATUS_FILE

    @property
    def explanations(self) -> Path:
        return self.inspection / EXPLANATIONS_DIR

    def split_manifest(self, member: str) -> Path:
        return self.inspection / f"split-{member}.json"

    @property
    def federation(self) -> Path:
        return self.directory / FEDERATION_DIR

    @property
    def federation_jobs(self) -> Path:
        return self.federation / JOBS_DIR

    def federation_data(self, job_id: str) -> Path:
        return self.federation / DATA_DIR / f"{job_id}.npz"


@dataclass(frozen=True)
class AuthorityLayout:
    """The paths of an authority's directory (see the module's tree)."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY_FILE

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def members(self) -> Path:
        return self.directory / MEMBERS_FILE

    @property
    def crl(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def member_directory(self) -> Path:
        """The signed member directory the service publishes."""
        return self.directory / DIRECTORY_FILE

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY_FILE

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT_FILE

    @property
    def runtime(self) -> Path:
        """Written by a running ``authority serve`` (its URL), removed when it stops."""
        return self.directory / RUN_DIR / AUTHORITY_RUNTIME_FILE

    @property
    def enrollments(self) -> Path:
        return self.directory / ENROLLMENTS_FILE

    @property
    def lock(self) -> Path:
        return self.directory / LOCK_FILE
