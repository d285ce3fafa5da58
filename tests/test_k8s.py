"""k8s/: the kustomize deployment (KubeRay RayCluster and RayJobs, MLflow with PostgreSQL and MinIO), offline.

Every rendered manifest is validated strictly, unknown keys being errors: custom resources against the
openAPIV3Schema of the KubeRay v1.7.0 CRDs (made strict here, see `strict_schema`), everything else against
kubernetes-validate's strict schemas of the newest Kubernetes it ships. The manifests are rendered by the real
`kubectl kustomize` (the client alone; no cluster is contacted); without kubectl the module is skipped, except in CI
(METADIST_CI=1), where that is a failure.

The CRDs are the vendored copies in tests/data/kuberay-crds-v1.7.0 (or $KUBERAY_CRDS).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from metadist.cli import train as train_cli
from metadist.config import apply_overrides
from metadist.config import load_job
from tests.helpers import missing_tool

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUSTOMIZATIONS = {"base": K8S, "jobs": K8S / "jobs", "secrets": K8S / "secrets"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
K8S_VERSION = kubernetes_validate.latest_version()  # the newest Kubernetes kubernetes-validate ships schemas for
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 40k lines


def _load_generator():
    spec = importlib.util.spec_from_file_location("k8s_jobs_generate", K8S / "jobs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


# -- rendering: the real `kubectl kustomize` ------------------------------------------------------------------------
KUBECTL = shutil.which("kubectl")
if KUBECTL is None:
    missing_tool("kubectl is not installed (the client alone renders k8s/)", module=True)


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize DIRECTORY` prints: what `kubectl apply -k` would send."""
    assert KUBECTL, "kubectl is needed to render k8s/ (it is the client alone: no cluster is contacted)"
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(which: str) -> tuple[dict, ...]:
    return tuple(render(KUSTOMIZATIONS[which]))


def objects(*which: str) -> list[dict]:
    return [copy.deepcopy(obj) for w in which for obj in _rendered(w)]


def ident(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(kind: str, *which: str) -> list[dict]:
    return [obj for obj in objects(*which) if obj["kind"] == kind]


DEPLOYED = ("base", "jobs")
CUSTOM = [obj for obj in objects(*DEPLOYED) if obj["apiVersion"].startswith("ray.io/")]
CORE = [obj for obj in objects(*DEPLOYED, "secrets") if not obj["apiVersion"].startswith("ray.io/")]


# -- strict validation against the KubeRay CRDs ---------------------------------------------------------------------
VENDORED_CRDS = REPO / "tests" / "data" / "kuberay-crds-v1.7.0"  # gzipped, unchanged (see its README)


def crd_text(kind: str) -> str:
    """The CRD of `kind`: from $KUBERAY_CRDS when set (plain or gzipped files), else the vendored copy."""
    folder = Path(os.environ.get("KUBERAY_CRDS") or VENDORED_CRDS)
    for path in (folder / CRD_FILES[kind], folder / f"{CRD_FILES[kind]}.gz"):
        if path.is_file():
            return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    pytest.fail(f"KubeRay v1.7.0 CRD {CRD_FILES[kind]}(.gz) not found in {folder} (KUBERAY_CRDS)")


def strict_schema(schema: dict) -> dict:
    """A copy of a CRD's structural schema that rejects what the API server would prune or reject.

    The CRDs never say `additionalProperties: false`: the API server drops unknown fields silently (or rejects
    them with --validate=strict). Here an object schema that lists `properties` gets `additionalProperties: false`
    unless it sets additionalProperties itself (a map) or `x-kubernetes-preserve-unknown-fields` (free-form).
    Kubernetes' other markers are applied as the API server reads them: `x-kubernetes-embedded-resource` objects
    also take apiVersion/kind/metadata, `x-kubernetes-int-or-string` takes either, `nullable` admits null. (The
    v1.7.0 CRDs use only the last two; their pod templates are spelled out field by field, not embedded.)
    """
    s = dict(schema)
    if s.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in s:
        props = {name: strict_schema(sub) for name, sub in s["properties"].items()}
        if s.get("x-kubernetes-embedded-resource"):
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props.setdefault("metadata", {"type": "object"})
        s["properties"] = props
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict_schema(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [strict_schema(sub) for sub in s[key]]
    return s


def _unique_list_map_keys(validator, keys, instance, schema):
    """`x-kubernetes-list-type: map`: no two items with the same keys (two containers or env vars of one name)."""
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate item {dict(zip(keys, key))} in a list keyed by {keys}")
            seen.add(key)


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-map-keys": _unique_list_map_keys}
)


@functools.cache
def _k8s_definitions() -> Resource:
    path = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
            / f"v{K8S_VERSION}-local-strict" / "_definitions.json")
    return Resource.from_contents(json.loads(path.read_text()))


@functools.cache
def crd_schema(kind: str, strict: bool = True) -> dict:
    """The openAPIV3Schema of the served storage version (v1), strict or as the CRD has it."""
    crd = yaml.load(crd_text(kind), Loader=_Loader)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    assert version["name"] == "v1"
    schema = version["schema"]["openAPIV3Schema"]
    if not strict:
        return schema
    schema = strict_schema(schema)
    # The CRD leaves metadata open ({type: object}); it is an ObjectMeta like any object's.
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json", _k8s_definitions())
    return KubeValidator(crd_schema(kind), registry=registry)


def crd_errors(obj: dict) -> list[str]:
    assert obj["apiVersion"] == "ray.io/v1", f"{ident(obj)}: apiVersion {obj['apiVersion']}"
    errors = crd_validator(obj["kind"]).iter_errors(obj)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]


@pytest.mark.parametrize("obj", CUSTOM, ids=ident)
def test_custom_resources_validate_strictly_against_the_kuberay_crds(obj):
    assert crd_errors(obj) == []


@pytest.mark.parametrize("obj", CORE, ids=ident)
def test_core_objects_validate_strictly_with_kubernetes_validate(obj):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _ray_cluster() -> dict:
    (cluster,) = of_kind("RayCluster", "base")
    return cluster


@pytest.mark.parametrize("where", ["spec", "headGroupSpec.template.spec.containers[0]", "workerGroupSpecs[0]"])
def test_the_strict_validator_rejects_an_unknown_key_in_a_raycluster(where):
    cluster = _ray_cluster()
    spec = cluster["spec"]
    target = {
        "spec": spec,
        "headGroupSpec.template.spec.containers[0]": spec["headGroupSpec"]["template"]["spec"]["containers"][0],
        "workerGroupSpecs[0]": spec["workerGroupSpecs"][0],
    }[where]
    target["minReplica"] = 1  # a misspelling: minReplicas
    errors = crd_errors(cluster)
    assert len(errors) == 1 and "'minReplica' was unexpected" in errors[0], errors
    # ... which the CRD's own schema lets through: without the strict copy this test would pass it.
    jsonschema.Draft202012Validator(crd_schema("RayCluster", strict=False)).validate(cluster)


def test_the_strict_validator_rejects_duplicate_containers_and_bad_metadata():
    cluster = _ray_cluster()
    containers = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))
    cluster["metadata"]["lables"] = {}
    errors = crd_errors(cluster)
    assert len(errors) == 2 and any("duplicate item {'name': 'ray-head'}" in e for e in errors), errors
    assert any(e.startswith("metadata: ") and "'lables' was unexpected" in e for e in errors), errors


def test_kubernetes_validate_rejects_an_unknown_key_in_a_deployment():
    (deployment,) = of_kind("Deployment", "base")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# -- pods: non-root, least privilege, requests and limits ---------------------------------------------------------
def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template an object holds, KubeRay's included."""
    spec, kind = obj.get("spec", {}), obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [("template", spec["template"]["spec"])]
    if kind == "CronJob":
        return [("jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "Pod":
        return [("pod", spec)]
    if kind == "RayJob":
        found = [("submitterPodTemplate", spec["submitterPodTemplate"]["spec"])] if "submitterPodTemplate" in spec else []
        if "rayClusterSpec" in spec:
            found += pod_specs({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})
        return found
    if kind == "RayCluster":
        return [("headGroupSpec", spec["headGroupSpec"]["template"]["spec"])] + [
            (f"workerGroupSpecs[{g['groupName']}]", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])
        ]
    return []


def containers() -> list[tuple[str, dict, dict]]:
    """(where, container, its pod's spec) for every container and init container that is deployed."""
    out = []
    for obj in objects(*DEPLOYED):
        for where, pod in pod_specs(obj):
            for c in pod.get("initContainers", []) + pod["containers"]:
                out.append((f"{ident(obj)} {where} {c['name']}", c, pod))
        options = obj.get("spec", {}).get("autoscalerOptions")
        if obj["kind"] == "RayCluster" and obj["spec"].get("enableInTreeAutoscaling"):
            # The autoscaler sidecar the operator adds to the head pod, from autoscalerOptions.
            assert options, f"{ident(obj)}: autoscaling without autoscalerOptions runs the autoscaler with defaults"
            head = obj["spec"]["headGroupSpec"]["template"]["spec"]
            out.append((f"{ident(obj)} autoscaler", {"name": "autoscaler", **options}, head))
    return out


CONTAINERS = containers()
_UNITS = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> Decimal:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return Decimal(number) * _UNITS[unit]


@pytest.mark.parametrize(("where", "container", "pod"), CONTAINERS, ids=[w for w, _, _ in CONTAINERS])
def test_every_container_runs_non_root_without_privileges(where, container, pod):
    sc, pod_sc = container.get("securityContext", {}), pod.get("securityContext", {})
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 1000)) != 0
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged") is not True
    assert "ALL" in sc.get("capabilities", {}).get("drop", [])
    assert not sc.get("capabilities", {}).get("add")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"))
    assert not any("hostPort" in port for port in container.get("ports", []))


@pytest.mark.parametrize(("where", "container", "pod"), CONTAINERS, ids=[w for w, _, _ in CONTAINERS])
def test_every_container_has_requests_and_limits(where, container, pod):
    resources = container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for resource in ("cpu", "memory"):
        assert resource in requests and resource in limits, f"{resource}: requests {requests}, limits {limits}"
        assert quantity(requests[resource]) <= quantity(limits[resource])
    for resource in set(requests) | set(limits):
        if "/" in resource:  # extended resources (nvidia.com/gpu) cannot be overcommitted
            assert quantity(requests.get(resource, limits[resource])) == quantity(limits[resource])


# -- exposure and credentials ---------------------------------------------------------------------------------------
def test_nothing_is_exposed_outside_the_cluster():
    for obj in objects(*DEPLOYED):
        assert obj["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute"), ident(obj)
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", ident(obj)
            assert not obj["spec"].get("externalIPs"), ident(obj)
    head = _ray_cluster()["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress") is not True


def _secret_keys() -> dict[str, set[str]]:
    """Secret name -> keys, as k8s/secrets generates them (the keys `kubectl create secret` must use too)."""
    return {s["metadata"]["name"]: set(s["data"]) for s in of_kind("Secret", "secrets")}


CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PGPASS|CREDENTIAL", re.IGNORECASE)


def test_credentials_come_from_secrets_never_inline():
    assert not of_kind("Secret", *DEPLOYED), "Secrets are created apart (k8s/secrets or kubectl create secret)"
    known = _secret_keys()
    referenced = set()
    for where, container, _ in CONTAINERS:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add((ref["name"], ref["key"]))
                assert ref["key"] in known.get(ref["name"], ()), f"{where} {env['name']}: no Secret key {ref}"
            elif CREDENTIAL_NAME.search(env["name"]):
                pytest.fail(f"{where}: {env['name']} is set inline, not from a Secret")
            value = env.get("value", "")
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{where} {env['name']}: credentials in a URI"
        for source in container.get("envFrom", []):
            assert "secretRef" not in source or source["secretRef"]["name"] in known
    auth = _ray_cluster()["spec"]["authOptions"]
    assert "auth_token" in known[auth["secretName"]]
    referenced.add((auth["secretName"], "auth_token"))
    # Every key generated is used, so the generator and the documented `kubectl create secret` stay minimal.
    assert referenced == {(name, key) for name, keys in known.items() for key in keys}


def test_example_secret_values_are_obvious_placeholders():
    for env_file in sorted((K8S / "secrets").glob("*.env")):
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key != "username":
                assert "CHANGE-ME" in value, f"{env_file.name}: {key} does not look like a placeholder"


# -- the Ray cluster -----------------------------------------------------------------------------------------------
def test_ray_cluster_cpu_head_autoscaling_gpu_workers_and_token_auth():
    spec = _ray_cluster()["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # training runs on the workers
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert not any("gpu" in r for r in {**head["requests"], **head["limits"]})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] >= 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"]["tolerations"]


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"Dockerfile: no ARG {name}=..."
    return match.group(1)


def test_images_are_the_ones_named_in_the_image_component():
    component = yaml.safe_load((K8S / "image" / "kustomization.yaml").read_text())
    expected = {rule["name"]: f"{rule.get('newName', rule['name'])}:{rule['newTag']}" for rule in component["images"]}
    used = {container["image"] for _, container, _ in CONTAINERS if "image" in container}
    assert used == set(expected.values())
    assert generate.IMAGE == expected["ghcr.io/metadist/metadist"]
    ray_images = {c["image"] for w, c, _ in CONTAINERS if w.startswith(("RayCluster", "RayJob")) and "image" in c}
    assert ray_images == {generate.IMAGE}  # one Ray version on the head, the workers and the submitters
    assert _ray_cluster()["spec"]["rayVersion"] == _dockerfile_arg("RAY_VERSION")
    assert _dockerfile_arg("TORCH_VERSION") == "2.13.0"


def test_the_image_holds_the_job_files_where_the_entrypoints_look():
    workdir = None
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        if line.startswith("COPY jobs "):
            assert f"{workdir}/{line.split()[2].removeprefix('./').rstrip('/')}" == generate.IMAGE_JOBS_DIR
            return
    pytest.fail("Dockerfile: no `COPY jobs ...`")


# -- the jobs ------------------------------------------------------------------------------------------------------
RAYJOBS = of_kind("RayJob", "jobs")


def test_the_committed_rayjobs_are_what_the_generator_writes():
    rendered = generate.render()
    on_disk = {p.name: p.read_text() for p in (K8S / "jobs").glob("*.yaml")}
    assert sorted(on_disk) == sorted(rendered), "run: .venv/bin/python k8s/jobs/generate.py"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"k8s/jobs/{name} is stale; run: .venv/bin/python k8s/jobs/generate.py"


def test_one_rayjob_per_standard_job_on_the_long_lived_cluster():
    assert sorted(j["metadata"]["name"] for j in RAYJOBS) == sorted(p.stem for p in (REPO / "jobs").glob("*.yaml"))
    cluster = _ray_cluster()
    for job in RAYJOBS:
        name = job["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47  # KubeRay: DNS-1035, 47 chars
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
        assert "rayClusterSpec" not in job["spec"] and "submitterPodTemplate" in job["spec"]


def _train_args(argv: list[str]) -> argparse.Namespace:
    """`metadist train ...` parsed by the real command's own arguments."""
    parser = argparse.ArgumentParser(prog="metadist", exit_on_error=False)
    train_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("rayjob", RAYJOBS, ids=ident)
def test_rayjob_entrypoint_names_a_job_file_and_its_overrides_validate(rayjob):
    name = rayjob["metadata"]["name"]
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["metadist", "train"]
    args = _train_args(argv[1:])
    assert args.job == f"{generate.IMAGE_JOBS_DIR}/{name}.yaml"
    job_file = REPO / "jobs" / f"{name}.yaml"
    assert job_file.is_file()
    overrides = list(args.overrides) + [f"distributed.workers={args.workers}"]  # as `metadist train` adds them
    job = apply_overrides(load_job(str(job_file)), overrides)
    assert job.distributed.workers >= 1 and job.distributed.address is None  # the driver joins via $RAY_ADDRESS
    assert job.distributed.gpus_per_worker is not None  # never "1 if the cluster has GPUs": it starts with none
    assert job.tracking.uri == generate.TRACKING_URI
    assert job.checkpoint.uri == f"{generate.CHECKPOINT_ROOT}/{name}"
    assert args.resume is False and args.no_progress
