"""The node directory's layout: what init writes is where NodeLayout says it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qdspace.node.config import NodeSettings
from qdspace.node.identity.authority import Authority
from qdspace.node.init import init_node
from qdspace.node.layout import MODELS_DIR, AuthorityLayout, NodeLayout


def test_init_writes_where_the_layout_says(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "authority", "qdspace-test")
    files = AuthorityLayout(authority.directory)
    assert [p.exists() for p in (files.ca_key, files.ca_cert, files.members, files.crl)] == [
        True
    ] * 4
    settings = init_node(tmp_path / "cellex", authority.directory, name="cellex", role="supplier")
    layout = settings.layout
    assert layout == NodeLayout(tmp_path / "cellex")
    written = sorted(p.name for p in layout.directory.iterdir())
    expected = [
        layout.config,
        layout.operator_token,
        layout.signing_key,
        layout.tls_key,
        layout.tls_cert,
        layout.ca_cert,
    ]
    assert written == sorted(p.name for p in expected)
    assert settings.crl_path == files.crl
    loaded = NodeSettings.load(layout.directory)
    assert loaded.database_url == layout.sqlite_url
    assert loaded.operator_token_path == layout.operator_token


def test_folders_owned_by_lower_packages_keep_their_names() -> None:
    from qdspace.inference.registry import MODELS_DIR as REGISTRY_DIR

    assert MODELS_DIR == REGISTRY_DIR
    layout = NodeLayout(Path("/n"))
    assert layout.models == Path("/n/models")
    assert layout.runtime == Path("/n/run/runtime.json")
    assert layout.federation_jobs == Path("/n/federation/jobs")
    assert layout.split_manifest("cellex") == Path("/n/inspection/split-cellex.json")


def test_the_layout_imports_only_the_standard_library() -> None:
    probe = (
        "import json, sys; before = set(sys.modules); import qdspace.node.layout; "
        "print(json.dumps(sorted(m for m in set(sys.modules) - before if 'qdspace' in m)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert loaded <= {"qdspace", "qdspace.node", "qdspace.node.layout"}, loaded
