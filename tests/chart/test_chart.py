"""The Helm chart, verified offline: lint, render, schemas of every kind, checkov, and the fields
that matter to users. No cluster runs here; see charts/sd-serving/README.md for what only a real
cluster can verify."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from scripts.render_k8s import (
    CHART,
    K8S,
    NAMESPACE,
    PROFILES,
    RELEASE,
    helm,
    helm_args,
    kustomization,
    plain_manifests,
    render,
)
from serving.settings import Settings, StageSettings, check_environment
from tests.helpers.net import free_port, wait_until

KUBERNETES_VERSION = "1.34.0"
CUSTOM_KINDS = {
    "InferenceService",
    "RayService",
    "NodePool",
    "EC2NodeClass",
    "ScaledObject",
    "PodMonitor",
    "ServiceMonitor",
    "PrometheusRule",
}
FULLNAME = f"{RELEASE}"  # the release name contains the chart name


@cache
def rendered(profile: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(profile))


def find(profile: str, kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for doc in rendered(profile)
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{profile}: expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(profile: str) -> set[str]:
    return {doc["kind"] for doc in rendered(profile)}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


# -- lint and render


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(profile: str) -> None:
    result = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), *helm_args(profile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_is_namespaced_and_labelled(profile: str) -> None:
    cluster_scoped = {"NodePool", "EC2NodeClass"}
    for doc in rendered(profile):
        metadata = doc["metadata"]
        if doc["kind"] not in cluster_scoped:
            assert metadata.get("namespace") == NAMESPACE, (doc["kind"], metadata["name"])
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE


# -- schemas


@pytest.mark.parametrize("profile", PROFILES)
def test_builtin_kinds_pass_strict_kubernetes_validation(profile: str) -> None:
    checked = 0
    for doc in rendered(profile):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 4


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as the API server's structural-schema pruning would drop them."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in crd_dir.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            api_version = f"{group}/{version['name']}"
            schemas[(api_version, kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


@pytest.mark.parametrize("profile", PROFILES)
def test_custom_resources_validate_against_their_crds(profile: str, crd_dir: Path) -> None:
    schemas = crd_schemas(crd_dir)
    custom = [doc for doc in rendered(profile) if doc["kind"] in CUSTOM_KINDS]
    assert custom
    for doc in custom:
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        assert schema is not None, f"no CRD for {doc['apiVersion']} {doc['kind']} in {crd_dir}"
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, "\n".join(
            f"{doc['kind']} {doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
            for e in errors[:10]
        )


def test_strict_crd_validation_catches_an_unknown_field(crd_dir: Path) -> None:
    service = copy.deepcopy(find("default", "InferenceService"))
    service["spec"]["predictor"]["minReplica"] = 1  # the typo a user would make
    schema = crd_schemas(crd_dir)[(service["apiVersion"], "InferenceService")]
    assert not jsonschema.Draft7Validator(schema).is_valid(service)


def test_values_schema_rejects_typos_and_wrong_types() -> None:
    for bad in (
        ["--set", "stages.unet.numGPUs=1"],
        ["--set", "autoscaling.mode=knative"],
        ["--set-string", "service.httpPort=eighty"],
        ["--set", "replicaCount=3"],
    ):
        result = subprocess.run(
            [helm(), "template", RELEASE, str(CHART), *bad], capture_output=True, text=True
        )
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad


def test_checkov_finds_no_failed_checks(tmp_path: Path) -> None:
    checkov = os.environ.get("CHECKOV_BIN") or str(CHART.parents[1] / ".tools/checkov/bin/checkov")
    for profile in PROFILES:
        (tmp_path / f"{profile}.yaml").write_text(
            "---\n".join(yaml.safe_dump(doc) for doc in rendered(profile))
        )
    result = subprocess.run(
        [
            checkov,
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert sum(report["summary"]["passed"] for report in reports) > 100


# -- what users rely on


def test_embedded_inference_service_exposes_http_and_grpc() -> None:
    service = find("default", "InferenceService")
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # the chart's HPA scales
    (container,) = service["spec"]["predictor"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "h2c": 9000, "metrics": 8080}
    assert container["command"] == ["sd-serving", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = env_of(container)
    assert env["SD_HTTP_HOST"] == "0.0.0.0" and env["SD_GRPC_PORT"] == "9000"


def test_embedded_predictor_runs_on_the_gpu_pool_and_tolerates_its_taint() -> None:
    predictor = find("default", "InferenceService")["spec"]["predictor"]
    assert predictor["nodeSelector"]["sd-serving/pool"] == "gpu-unet"
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in predictor["tolerations"]
    terms = predictor["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchExpressions"][0]["values"] == ["nvidia-l40s"]
    resources = predictor["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"


def test_stage_settings_reach_the_app_and_parse() -> None:
    (container,) = find("default", "InferenceService")["spec"]["predictor"]["containers"]
    env = env_of(container)
    unet = StageSettings.model_validate_json(env["SD_UNET"])
    assert unet.num_gpus == 0.8 and unet.max_replicas == 8
    assert StageSettings.model_validate_json(env["SD_VAE"]).num_gpus == 0.1


def test_storage_uri_is_handed_to_kserve_and_the_app_reads_mnt_models() -> None:
    (container,) = find("gpu-embedded", "InferenceService")["spec"]["predictor"]["containers"]
    env = env_of(container)
    assert env["STORAGE_URI"] == "s3://models/stable-diffusion-v1-5"
    assert env["SD_MODEL"] == "/mnt/models"
    assert env["SD_API_KEYS_FILE"] == "/etc/sd-serving/api-keys/api-keys"


def test_hpa_scales_the_predictor_on_in_flight_requests() -> None:
    hpa = find("gpu-embedded", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-predictor",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "ray_serve_num_ongoing_http_requests"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 12)


def test_keda_scales_the_predictor_on_unet_queue_depth() -> None:
    scaled = find("keda-autoscaling", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-predictor"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "ray_serve_deployment_queued_queries" in query
    assert 'deployment=~"UNetDenoiser.*"' in query  # every model's UNet
    assert f'namespace="{NAMESPACE}"' in query and f"{FULLNAME}-predictor-.*" in query
    assert trigger["metadata"]["threshold"] == "4"
    assert "HorizontalPodAutoscaler" not in kinds("keda-autoscaling")


def test_kserve_autoscaling_leaves_scaling_to_kserve() -> None:
    service = find("cpu-dev", "InferenceService")
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert service["spec"]["predictor"]["scaleMetric"] == "cpu"
    assert not kinds("cpu-dev") & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert "nvidia.com/gpu" not in json.dumps(service)


def test_scale_to_zero_uses_serverless_mode_with_one_port() -> None:
    docs = render("default", "--set", "autoscaling.scaleToZero=true")
    (service,) = [doc for doc in docs if doc["kind"] == "InferenceService"]
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert service["spec"]["predictor"]["minReplicas"] == 0
    assert len(service["spec"]["predictor"]["containers"][0]["ports"]) == 1
    assert not {doc["kind"] for doc in docs} & {"HorizontalPodAutoscaler", "ScaledObject"}


def _ray_service(name: str) -> dict[str, Any]:
    return find("gpu-kuberay-karpenter", "RayService", name)


def test_kuberay_serve_config_names_build_app_and_valid_settings() -> None:
    config = yaml.safe_load(_ray_service(FULLNAME)["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "serving.app:build_app"
    settings = Settings(**app["args"])  # what build_app will receive
    assert settings.model == "/mnt/models"
    assert settings.unet.resources == {"pool-gpu-unet": 0.001}
    assert settings.text_encoder.resources == {"pool-gpu-small": 0.001}
    assert settings.ingress.resources == {"pool-cpu-small": 0.001}
    assert settings.unet.max_replicas == 64
    assert _ray_service(FULLNAME)["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_kuberay_serve_access_log_follows_the_sd_access_log_setting() -> None:
    """Off by default, as under `sd-serving serve`; settings.SD_ACCESS_LOG turns it on."""

    def access_log(*extra: str) -> bool:
        (service,) = [
            doc
            for doc in render("gpu-kuberay-karpenter", *extra)
            if doc["kind"] == "RayService" and doc["metadata"]["name"] == FULLNAME
        ]
        (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
        return bool(app["logging_config"]["enable_access_log"])

    assert access_log() is False
    assert access_log("--set-string", "settings.SD_ACCESS_LOG=true") is True


def _app_pod_specs(node: Any) -> list[dict[str, Any]]:
    """Every pod spec (predictor, Ray head and workers) whose containers run the app: they have
    the app's environment (SD_HTTP_PORT among it)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        containers = node.get("containers")
        if isinstance(containers, list) and any(
            e.get("name") == "SD_HTTP_PORT" for c in containers for e in c.get("env", [])
        ):
            found.append(node)
        for value in node.values():
            found += _app_pod_specs(value)
    elif isinstance(node, list):
        for item in node:
            found += _app_pod_specs(item)
    return found


@pytest.mark.parametrize("profile", ["gpu-embedded", "gpu-kuberay-karpenter"])
def test_a_compile_cache_claim_is_mounted_where_the_setting_points(profile: str) -> None:
    """Without a claim the compiled graphs stay in the pod's /tmp (the image's default); with
    one, every app container mounts it at SD_COMPILE_CACHE_DIR, so new pods load them."""
    assert not any("SD_COMPILE_CACHE_DIR" in _env_names(doc) for doc in rendered(profile))
    pods = _app_pod_specs(render(profile, "--set", "compileCache.claimName=sd-compile-cache"))
    assert len(pods) >= (1 if profile == "gpu-embedded" else 2)  # Ray head and workers
    for spec in pods:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims.get("compile-cache") == "sd-compile-cache"
        for container in spec["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert env_of(container)["SD_COMPILE_CACHE_DIR"] == mounts["compile-cache"]


@pytest.mark.parametrize("profile", ["default", "gpu-kuberay-karpenter"])
def test_a_lora_claim_is_mounted_read_only_where_sd_lora_dir_points(profile: str) -> None:
    """Every app container (the UNet's replicas load adapters, the ingress lists and checks
    them) mounts the adapter library and SD_LORA_DIR names the mount."""
    assert not any("SD_LORA_DIR" in _env_names(doc) for doc in rendered(profile))
    docs = render(profile, "--set", "loras.claimName=sd-loras", "--set", "loras.subPath=styles")
    pods = _app_pod_specs(docs)
    assert pods
    for spec in pods:
        claims = {
            v["name"]: v["persistentVolumeClaim"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims["loras"] == {"claimName": "sd-loras", "readOnly": True}
        for container in spec["containers"]:
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["loras"]["readOnly"] and mounts["loras"]["subPath"] == "styles"
            assert env_of(container)["SD_LORA_DIR"] == mounts["loras"]["mountPath"]


@pytest.mark.parametrize("profile", ["default", "gpu-kuberay-karpenter"])
def test_webhook_allow_list_reaches_every_app_container_as_the_setting(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not any("SD_WEBHOOK_ALLOW" in _env_names(doc) for doc in rendered(profile))
    docs = render(profile, "--set", "webhooks.allow={10.20.0.0/16,hooks.internal}")
    pods = _app_pod_specs(docs)
    assert pods
    for spec in pods:
        for container in spec["containers"]:
            monkeypatch.setenv("SD_WEBHOOK_ALLOW", env_of(container)["SD_WEBHOOK_ALLOW"])
            assert Settings().webhook_allow == ["10.20.0.0/16", "hooks.internal"]


@pytest.mark.parametrize("profile", ["default", "gpu-kuberay-karpenter"])
def test_shared_state_settings_reach_every_app_container(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis's URL from a Secret, never in the manifest; the image store and its retention."""
    assert not any("SD_REDIS_URL" in _env_names(doc) for doc in rendered(profile))
    docs = render(
        profile,
        "--set",
        "sharedState.redisSecret=sd-redis",
        "--set",
        "sharedState.imageStoreUrl=s3://images-bucket/sd",
        "--set",
        "sharedState.imageRetentionSeconds=86400",
    )
    pods = _app_pod_specs(docs)
    assert pods
    for spec in pods:
        for container in spec["containers"]:
            env = {e["name"]: e for e in container["env"]}
            reference = env["SD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": "sd-redis", "key": "redis-url"}
            monkeypatch.setenv("SD_IMAGE_STORE_URL", env["SD_IMAGE_STORE_URL"]["value"])
            monkeypatch.setenv("SD_IMAGE_RETENTION_S", env["SD_IMAGE_RETENTION_S"]["value"])
            settings = Settings()
            assert settings.image_store_url == "s3://images-bucket/sd"
            assert settings.image_retention_s == 86400


def _redis_docs(*extra: str) -> dict[str, Any]:
    """The chart's Redis objects by kind, rendered from the default profile."""
    docs = render("cpu-dev", "--set", "redis.enabled=true", *extra)
    return {
        doc["kind"]: doc
        for doc in docs
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "redis"
    } | {"_app": _app_pod_specs(docs)}


def test_the_chart_deploys_redis_with_a_generated_password_a_volume_and_no_eviction() -> None:
    objects = _redis_docs("--set", "redis.persistence.size=20Gi")
    secret = objects["Secret"]
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert len(password) == 32 and password.isalnum()
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    stateful = objects["StatefulSet"]
    claim = stateful["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    container = stateful["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "--appendonly yes" in script and "--maxmemory-policy noeviction" in script
    assert password not in json.dumps(stateful)  # from the mounted Secret at start, never inline
    assert objects["Service"]["spec"]["ports"][0]["port"] == 6379
    allowed = objects["NetworkPolicy"]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert allowed["matchLabels"] == {"serving.kserve.io/inferenceservice": FULLNAME}
    # Every app container reaches it with the password Kubernetes puts into the URL.
    for spec in objects["_app"]:
        for container in spec["containers"]:
            env = {e["name"]: e for e in container["env"]}
            reference = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": secret["metadata"]["name"], "key": "redis-password"}
            url = env["SD_REDIS_URL"]["value"].replace("$(REDIS_PASSWORD)", password)
            assert url == f"redis://:{password}@{FULLNAME}-redis:6379/0"


def test_the_chart_redis_takes_an_existing_password_and_refuses_a_second_redis() -> None:
    objects = _redis_docs("--set", "redis.auth.existingSecret=my-redis")
    assert "Secret" not in objects
    volumes = objects["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["secret"]["secretName"] == "my-redis"
    refusal = _refusal(
        "default", "--set", "redis.enabled=true", "--set", "sharedState.redisSecret=external"
    )
    assert "set only one" in refusal


def test_the_chart_redis_commands_start_redis_and_its_probes_answer(tmp_path: Path) -> None:
    """The container's start script and probes, run against Debian's redis-server with the
    chart's paths moved into a temporary folder: the password file is what Redis requires."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make tools` (Debian's redis-server)")
    container = _redis_docs()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    (tmp_path / "auth").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "auth" / "password").write_text("s3cret")
    port = free_port()

    def local(command: str) -> str:
        moved = {"/etc/redis-auth": "auth", "/data": "data", "/tmp": "tmp"}
        command = re.sub(
            r"/etc/redis-auth|/data|/tmp", lambda m: str(tmp_path / moved[m[0]]), command
        )
        return command.replace("redis-cli", f"redis-cli -p {port}")

    start = local(container["args"][0]) + f" --port {port} --bind 127.0.0.1"
    server = subprocess.Popen(["sh", "-c", start])
    try:
        probe = local(container["readinessProbe"]["exec"]["command"][2])
        assert wait_until(
            lambda: subprocess.run(["sh", "-c", probe]).returncode == 0, timeout_s=20
        ), "the readiness probe never passed"
        client = redis.Redis(port=port, password="s3cret")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_kuberay_unet_pool_worker_group_has_gpus_placement_and_the_pool_resource() -> None:
    groups = {
        group["groupName"]: group
        for group in _ray_service(FULLNAME)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    }
    assert set(groups) == {"gpu-unet", "gpu-small", "cpu-small"}
    unet = groups["gpu-unet"]
    assert json.loads(unet["rayStartParams"]["resources"]) == {"pool-gpu-unet": 1000}
    assert unet["rayStartParams"]["num-gpus"] == "8"
    pod = unet["template"]["spec"]
    assert pod["nodeSelector"]["sd-serving/pool"] == "gpu-unet"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "tolerations" not in groups["cpu-small"]["template"]["spec"]


def test_kuberay_gateway_forwards_to_the_canary_during_a_rollout() -> None:
    service = find("gpu-kuberay-karpenter", "InferenceService")
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 10
    command = service["spec"]["predictor"]["containers"][0]["command"]
    assert command[:3] == ["sd-serving", "gateway", "--upstream"]
    assert command[3] == f"http://{FULLNAME}-canary-serve-svc:8000"
    canary = _ray_service(f"{FULLNAME}-canary")
    assert canary["metadata"]["labels"]["sd-serving/variant"] == "canary"
    head = canary["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"].endswith(":0.2.0")
    args = yaml.safe_load(canary["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["model_name"] == "sd15-finetune-2026-11"


# -- several models


def _refusal(profile: str, *extra: str) -> str:
    result = subprocess.run(
        [helm(), "template", RELEASE, str(CHART), *helm_args(profile, *extra)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, extra
    return result.stderr


def test_two_models_in_one_embedded_pod_each_with_its_own_stages() -> None:
    predictor = find("two-models-embedded", "InferenceService")["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = env_of(container)
    assert "SD_MODEL" not in env and "SD_MODEL_NAME" not in env
    settings = Settings(models=json.loads(env["SD_MODELS"]), default_model=env["SD_DEFAULT_MODEL"])
    assert list(settings.served_models()) == ["sd15", "sdxl"]
    assert settings.default_model_name() == "sdxl"
    # SD 1.5 comes through KServe's storage initializer, SDXL from its own claim.
    assert env["STORAGE_URI"] == "s3://models/stable-diffusion-v1-5"
    assert settings.models["sd15"].source == "/mnt/models"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    sdxl_volume = volumes[mounts[settings.models["sdxl"].source]]
    assert sdxl_volume["persistentVolumeClaim"]["claimName"] == "sdxl-base-1.0"
    # Each model's stages share the pod's one GPU by their own fractions.
    assert settings.stage("unet", "sd15").num_gpus == 0.3
    assert settings.stage("unet", "sdxl").num_gpus == 0.45
    assert settings.stage("unet", "sdxl").max_ongoing_requests == 48
    assert settings.stage("vae", "sdxl").max_replicas == 4  # the service-wide value
    assert settings.models["sdxl"].defaults.steps == 30
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_two_models_on_kuberay_are_each_placed_on_their_own_pools() -> None:
    service = find("two-models-kuberay", "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    settings = Settings(**app["args"])  # what build_app will receive
    assert settings.default_model_name() == "sdxl"
    assert settings.models["sdxl"].source == "/mnt/sd-models/sdxl"
    assert settings.models["turbo"].source == "stabilityai/sd-turbo"  # fetched by the pods
    assert settings.models["turbo"].defaults.steps == 2
    assert settings.stage("unet", "sdxl").resources == {"pool-gpu-unet": 0.001}
    assert settings.stage("unet", "turbo").resources == {"pool-gpu-small": 0.001}
    assert settings.stage("text_encoder", "sdxl").resources == {"pool-gpu-small": 0.001}
    assert settings.stage("unet", "sdxl").max_replicas == 32
    assert settings.ingress.resources == {"pool-cpu-small": 0.001}
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    worker = next(g for g in groups if g["groupName"] == "gpu-unet")["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in worker["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"sdxl-base-1.0"}
    assert "STORAGE_URI" not in json.dumps(find("two-models-kuberay", "InferenceService"))


@pytest.mark.parametrize(
    ("profile", "extra", "message"),
    [
        (
            "two-models-kuberay",
            ["--set", "models.turbo.stages.unet.pool=gpu-large"],
            'models.turbo.stages.unet.pool is "gpu-large", which is not an enabled nodePools entry',
        ),
        (
            "two-models-embedded",
            ["--set", "models.sdxl.source=storageUri", "--set", "models.sdxl.storageUri=gs://m/xl"],
            "models sd15, sdxl: KServe's storage initializer fetches one storageUri per pod",
        ),
        (
            "two-models-kuberay",
            ["--set", "models.turbo.storageUri=s3://models/sd-turbo"],
            "models.turbo: kuberay mode has no storage initializer",
        ),
        (
            "two-models-embedded",
            ["--set", "defaultModel=sd21"],
            'defaultModel "sd21" is not a key of models (sd15, sdxl)',
        ),
        (
            "two-models-embedded",
            ["--set", "models.sdxl.stages.unet.minReplicas=2"],
            "add up to 1.45 GPUs, more than the predictor pod's embedded.gpus=1",
        ),
        (
            "two-models-kuberay",
            [
                "--set",
                "kuberay.canary.enabled=true",
                "--set",
                "kuberay.canary.imageTag=0.3",
                "--set",
                "kuberay.canary.modelName=other",
            ],
            "with `models`, the canary serves the same models",
        ),
    ],
)
def test_inconsistent_model_values_are_refused(
    profile: str, extra: list[str], message: str
) -> None:
    assert message in _refusal(profile, *extra)


ROLLOUT_VALUES = (
    '{"versions": {"1": {}, "2": {"adapter": "tuned-2", "scale": 0.8}}, "champion": "1", '
    '"challenger": "2", "canaryPercent": 10}'
)


def test_model_versions_reach_the_app_in_both_modes() -> None:
    """A model's rollout (its versions, champion and canary) becomes the setting the app reads:
    SD_ROLLOUT for the one model in embedded mode, build_app's `rollout` arg in kuberay mode, and
    each model's own `rollout` in SD_MODELS."""
    extra = ["--set", "loras.claimName=adapters", "--set-json", f"model.rollout={ROLLOUT_VALUES}"]
    docs = render("default", *extra)
    (service,) = [doc for doc in docs if doc["kind"] == "InferenceService"]
    env = env_of(service["spec"]["predictor"]["containers"][0])
    embedded = Settings(rollout=json.loads(env["SD_ROLLOUT"])).served_models()["sd-embedded"]
    assert embedded.rollout.versions["2"].adapter == "tuned-2"
    assert embedded.rollout.versions["2"].scale == 0.8
    assert (embedded.rollout.challenger, embedded.rollout.canary_percent) == ("2", 10)
    (ray_service,) = [
        doc for doc in render("gpu-kuberay-karpenter", *extra) if doc["kind"] == "RayService"
    ][:1]
    (app,) = yaml.safe_load(ray_service["spec"]["serveConfigV2"])["applications"]
    assert Settings(**app["args"]).rollout.champion_version == "1"
    predictor = find("two-models-embedded", "InferenceService")["spec"]["predictor"]
    models = json.loads(env_of(predictor["containers"][0])["SD_MODELS"])
    settings = Settings(models=models)
    assert settings.models["sd15"].rollout.canary_percent == 10
    assert settings.models["sdxl"].rollout.versions == {}


def test_a_versioned_adapter_needs_the_lora_claim_and_a_known_challenger() -> None:
    bare = ["--set-json", f"model.rollout={ROLLOUT_VALUES}"]
    assert "set loras.claimName to the claim holding it" in _refusal("default", *bare)
    bad = ["--set-json", 'model.rollout={"versions": {"a/b": {}}}']
    assert "values don't meet the specifications of the schema" in _refusal("default", *bad)


def test_model_names_and_fields_are_checked_by_the_values_schema() -> None:
    for bad in (
        ["--set", "models.SDXL.source=embedded"],
        ["--set", "models.sdxl.source=embedded", "--set", "models.sdxl.family=flux"],
        ["--set", "models.sdxl.source=embedded", "--set", "models.sdxl.stages.unet.numGPUs=1"],
    ):
        assert "values don't meet the specifications of the schema" in _refusal("default", *bad)


def test_karpenter_node_pool_per_enabled_pool() -> None:
    pools = {
        d["metadata"]["name"]: d
        for d in rendered("gpu-kuberay-karpenter")
        if d["kind"] == "NodePool"
    }
    assert set(pools) == {f"{FULLNAME}-gpu-unet", f"{FULLNAME}-gpu-small", f"{FULLNAME}-cpu-small"}
    unet = pools[f"{FULLNAME}-gpu-unet"]["spec"]
    requirements = {r["key"]: r["values"] for r in unet["template"]["spec"]["requirements"]}
    assert requirements["node.kubernetes.io/instance-type"] == ["p5.48xlarge"]
    assert unet["template"]["metadata"]["labels"]["sd-serving/accelerator"] == "nvidia-h100"
    assert unet["template"]["spec"]["nodeClassRef"]["name"] == f"{FULLNAME}-gpu-unet"
    assert unet["limits"]["nvidia.com/gpu"] == "64"
    assert "NodePool" not in kinds("default")


def test_a_stage_on_a_disabled_pool_is_refused() -> None:
    refusal = _refusal("gpu-kuberay-karpenter", "--set", "nodePools.gpu-small.enabled=false")
    assert 'stages.textEncoder.pool is "gpu-small", which is not an enabled nodePools entry' in (
        refusal
    )


def test_pods_are_locked_down() -> None:
    predictor = find("default", "InferenceService")["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    context = predictor["containers"][0]["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in predictor["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts  # Ray's writable scratch on a read-only root


def test_disruption_budget_and_network_policy_select_the_predictor() -> None:
    budget = find("default", "PodDisruptionBudget")
    selector = {"serving.kserve.io/inferenceservice": FULLNAME}
    assert budget["spec"]["selector"]["matchLabels"] == selector
    policy = find("default", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8000, 9000, 8080}


def test_monitoring_scrapes_metrics_and_alerts_link_a_runbook_section() -> None:
    monitor = find("default", "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    runbook = (CHART.parents[1] / "docs" / "runbook.md").read_text()
    rules = find("default", "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert len(rules) >= 5
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert f"## {rule['alert']}" in runbook and anchor == rule["alert"].lower()
    assert any(rule["expr"].strip().startswith("absent(") for rule in rules)


def test_dashboards_become_grafana_config_maps() -> None:
    maps = [d for d in rendered("default") if d["kind"] == "ConfigMap"]
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert files and sorted(name for m in maps for name in m["data"]) == files
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        for text in config_map["data"].values():
            assert json.loads(text)["uid"]


def test_helm_test_pod_runs_the_png_check_against_the_predictor() -> None:
    pod = find("default", "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "serving.smoke"]
    assert command[command.index("--url") + 1] == (
        f"http://{FULLNAME}-predictor.{NAMESPACE}.svc.cluster.local"
    )
    assert pod["spec"]["restartPolicy"] == "Never"


# -- k8s/ is the chart's rendered output


@pytest.mark.parametrize("profile", PROFILES)
def test_plain_manifests_match_the_chart(profile: str) -> None:
    folder = K8S / profile
    assert (folder / "manifests.yaml").read_text() == plain_manifests(profile), (
        f"k8s/{profile} drifted from the chart: run `make render-k8s`"
    )
    assert (folder / "kustomization.yaml").read_text() == kustomization()


def test_the_grpc_servicer_the_serve_config_names_exists() -> None:
    config = yaml.safe_load(_ray_service(FULLNAME)["spec"]["serveConfigV2"])
    (path,) = config["grpc_options"]["grpc_servicer_functions"]
    module, _, function = path.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))


def _env_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                names.update(item["name"] for item in value if isinstance(item, dict))
            else:
                names |= _env_names(value)
    elif isinstance(node, list):
        for item in node:
            names |= _env_names(item)
    return names


@pytest.mark.parametrize("profile", PROFILES)
def test_every_sd_variable_the_chart_sets_names_a_setting(profile: str) -> None:
    names = {name for doc in rendered(profile) for name in _env_names(doc)}
    assert "SD_HTTP_PORT" in names
    check_environment(dict.fromkeys(names, "x"))  # raises naming the variable and its fix
