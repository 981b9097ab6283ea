"""The layering of the project as a test: which package may import which.

The node is a grid of features across layers: ``runtime/`` holds the feature services,
``rpc/`` (gRPC), ``api/`` (REST) and ``cli/`` (Typer) are three transports over them,
``demo/`` tells the story through the operator-API client and ``localnet/`` only. The
lower packages (connector, policies, ledger, federation, inference, protocols) know
nothing of the node. These rules are what keeps a feature findable by one name and a
transport replaceable; a reviewer cannot see a stray import in a diff, this test can.

The source is read with ``ast`` (nothing is imported), every import counts, also one
inside a function or under ``TYPE_CHECKING``: a type-only import is still a dependency
a reader has to follow. Relative imports are resolved against the file's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "qdspace"
PACKAGES = (
    "node",
    "connector",
    "policies",
    "ledger",
    "federation",
    "inference",
    "protocols",
    "util",
)
LOWER = tuple(p for p in PACKAGES if p != "node")
TRANSPORTS = ("grpc", "grpc_health", "fastapi", "starlette", "typer", "uvicorn")
NODE_TRANSPORT_LAYERS = ("rpc", "api", "cli")
#: besides the client and localnet, the demo may name the node's vocabulary: its error
#: base (a failed step is a NodeError, which the CLI prints as one line) and the names
#: of a node directory's files (layout) and the member-id format; none does anything
DEMO_MAY_USE = (
    "qdspace.node.client",
    "qdspace.node.localnet",
    "qdspace.node.demo",
    "qdspace.node.errors",
    "qdspace.node.layout",
    "qdspace.node.member_ids",
)


@dataclass(frozen=True)
class Import:
    """One import statement: the file's module, where, what it names (absolute)."""

    module: str  # the importing file's module, e.g. qdspace.node.runtime.ledger
    path: Path
    line: int
    text: str  # the statement as written, for the report
    targets: tuple[str, ...]  # ``from a import b`` names ``a`` and ``a.b`` (b may be a module)

    def names(self, prefix: str) -> bool:
        """Whether the statement imports ``prefix`` or anything under it."""
        return any(t == prefix or t.startswith(prefix + ".") for t in self.targets)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts and parts[0] in PACKAGES:
        parts.insert(0, NAMESPACE)
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_in(path: Path) -> Iterator[Import]:
    """Every import statement in ``path``, wherever it stands in the file."""
    module = _module_of(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, path, node.lineno, f"import {alias.name}", (alias.name,))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, path.name == "__init__.py", node.level, node.module)
            else:
                base = node.module or ""
            names = [a.name for a in node.names]
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
            targets = (base, *(f"{base}.{n}" for n in names if n != "*"))
            yield Import(module, path, node.lineno, text, targets)


def _source_files(*folders: str) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _all_imports(*folders: str) -> list[Import]:
    return [imp for path in _source_files(*folders) for imp in imports_in(path)]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _check(rule: str, bad: list[Import]) -> None:
    if bad:
        ordered = sorted(bad, key=lambda b: (str(b.path), b.line))
        lines = list(dict.fromkeys(str(b) for b in ordered))
        pytest.fail(f"{rule}: {len(lines)} import(s) break it:\n  " + "\n  ".join(lines))


NODE = _all_imports("node")


def test_the_rules_see_the_source() -> None:
    """Guard against a rule passing because it reads nothing."""
    assert len(_source_files(*PACKAGES)) > 100
    assert any(i.names("qdspace.node.runtime") for i in NODE)
    assert any(i.module.startswith("qdspace.node.runtime.") for i in NODE)
    assert any(i.names("fastapi") for i in NODE)


def test_runtime_imports_no_transport() -> None:
    bad = [
        i
        for i in NODE
        if _under(i.module, "qdspace.node.runtime") and any(i.names(t) for t in TRANSPORTS)
    ]
    _check("node/runtime/ imports no transport (" + ", ".join(TRANSPORTS) + ")", bad)


@pytest.mark.parametrize("layer", NODE_TRANSPORT_LAYERS)
def test_transport_layers_do_not_import_each_other(layer: str) -> None:
    others = [f"qdspace.node.{o}" for o in NODE_TRANSPORT_LAYERS if o != layer]
    bad = [
        i
        for i in NODE
        if _under(i.module, f"qdspace.node.{layer}") and any(i.names(o) for o in others)
    ]
    _check(f"node/{layer}/ imports none of " + ", ".join(others), bad)


@pytest.mark.parametrize("package", LOWER)
def test_lower_packages_never_import_the_node(package: str) -> None:
    bad = [i for i in _all_imports(package) if i.names("qdspace.node")]
    _check(f"{package}/ never imports qdspace.node", bad)


def test_util_imports_nothing_of_the_project() -> None:
    bad = [i for i in _all_imports("util") if any(t.startswith("qdspace.") for t in i.targets)]
    _check("util/ imports nothing of the project (every package may import it)", bad)


def test_demo_uses_only_the_client_localnet_and_lower_packages() -> None:
    bad = [
        i
        for i in NODE
        if _under(i.module, "qdspace.node.demo")
        and any(
            _under(t, "qdspace.node") and not any(_under(t, ok) for ok in DEMO_MAY_USE)
            for t in i.targets
        )
    ]
    _check("node/demo/ imports from qdspace.node only " + ", ".join(DEMO_MAY_USE), bad)


def _names_the_demo_package(target: str) -> bool:
    """``qdspace.node.demo`` itself, or a name defined in its ``__init__.py`` (not one
    of its modules: ``from qdspace.node.demo import report`` is a sibling module)."""
    if target == "qdspace.node.demo":
        return True
    if not target.startswith("qdspace.node.demo."):
        return False
    first = target.removeprefix("qdspace.node.demo.").split(".")[0]
    folder = ROOT / "node" / "demo"
    return not (folder / f"{first}.py").exists() and not (folder / first).is_dir()


def test_demo_chapters_do_not_import_the_demo_package() -> None:
    """The package imports its chapters; a chapter importing it back makes a circle."""
    bad = [
        i
        for i in NODE
        if i.module.startswith("qdspace.node.demo.")
        and any(_names_the_demo_package(t) for t in i.targets[1:] or i.targets)
    ]
    _check("demo chapters never import the qdspace.node.demo package", bad)


def test_nothing_imports_the_old_top_level_names() -> None:
    """Only ``qdspace.node``, ``qdspace.connector``, ...: a bare ``node`` or ``ledger``
    is another PyPI project's name, and the wheel installs no such package."""
    bad = [
        i
        for i in _all_imports(*PACKAGES, "qdspace", "tests", "bench")
        if any(t.split(".")[0] in PACKAGES for t in i.targets)
    ]
    _check("imports name qdspace.<package>, never a bare <package>", bad)
