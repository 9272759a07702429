"""Every MEDVEC_PROFILE loads with the real Dagster CLI; the cluster profile runs each step in its own pod
and gives the embedding steps a GPU; the cluster's instance config and Helm values hold together."""

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipelines.profiles import PROFILES, ProfileError, profile_from_env
from resources.embedders import LocalEmbedderResource, NimEmbedderResource

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "cluster"

#: The least each profile needs to load; no server or bucket is reached while definitions load.
PROFILE_ENV = {
    "local": {},
    "gpu-box": {},
    "nim": {"MEDVEC_NIM_URL": "http://127.0.0.1:9/v1"},
    "cluster": {"MEDVEC_HOME": "s3://medvec-test/home", "MEDVEC_LANCEDB_URI": "s3://medvec-test/lancedb",
                "MEDVEC_PSEUDONYM_KEY": "cluster-test-key"},
}


def _clean_env(tmp_path, **extra) -> dict[str, str]:
    """This process's environment without any MEDVEC_ setting a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVEC_", "NVIDIA_API_KEY"))}
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**env, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(dagster_home), **extra}


def _validate(env) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                           "-m", "pipelines.definitions"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def test_the_table_names_every_profile_the_issue_asks_for():
    assert set(PROFILES) == set(PROFILE_ENV) == {"local", "gpu-box", "nim", "cluster"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PROFILE_ENV))
def test_dagster_definitions_validate_passes_for_the_profile(tmp_path, name):
    proc = _validate(_clean_env(tmp_path, MEDVEC_PROFILE=name, **PROFILE_ENV[name]))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_unknown_profile_stops_the_code_location_naming_the_valid_ones(tmp_path):
    proc = _validate(_clean_env(tmp_path, MEDVEC_PROFILE="gpu"))
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "MEDVEC_PROFILE='gpu' is not a profile; choose one of: local, gpu-box, nim, cluster" in output


def _load_definitions(monkeypatch, tmp_path, name, **extra) -> dg.Definitions:
    """pipelines/definitions.py run afresh under a profile's environment, leaving the imported module
    (and the other tests' definitions) as they are."""
    for key in [k for k in os.environ if k.startswith("MEDVEC_") or k == "NVIDIA_API_KEY"]:
        monkeypatch.delenv(key)
    for key, value in {"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_PROFILE": name,
                       **PROFILE_ENV[name], **extra}.items():
        monkeypatch.setenv(key, value)
    return runpy.run_module("pipelines.definitions", run_name=f"definitions_{name}")["defs"]


def _executor_config(job: dg.JobDefinition) -> dict:
    """The executor config a run of the job resolves (the profile's configured values plus defaults)."""
    from dagster._core.system_config.objects import ResolvedRunConfig

    return ResolvedRunConfig.build(job, {}).execution.execution_engine_config


def _step_pod(job: dg.JobDefinition, op_name: str):
    """The Kubernetes Job the k8s executor would create for one step: its config merged the way
    dagster_k8s's step handler merges it (executor config, then the op's `dagster-k8s/config` tag, then
    `per_step_k8s_config`), built by dagster_k8s itself."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job,
                                 get_user_defined_k8s_config)

    config = _executor_config(job)
    executor_context = K8sContainerContext(
        env_secrets=config.get("env_secrets"), namespace=config.get("job_namespace"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})))
    op_tags = job.graph.node_named(op_name).definition.tags
    context = executor_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags))) \
        .merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            config["per_step_k8s_config"].get(op_name, {}))))
    k8s_job = construct_dagster_k8s_job(DagsterK8sJobConfig(job_image="medvec:test", dagster_home="/opt/dagster"),
                                        args=["dagster", "api", "execute_step"], job_name=f"step-{op_name}",
                                        user_defined_k8s_config=context.run_k8s_config)
    return k8s_job.spec.template.spec


def _gpus(pod_spec) -> dict:
    resources = pod_spec.containers[0].resources
    return {"requests": (resources.requests or {}).get("nvidia.com/gpu") if resources else None,
            "limits": (resources.limits or {}).get("nvidia.com/gpu") if resources else None}


def test_cluster_runs_every_job_on_the_k8s_executor_with_gpu_pods_for_the_embedding_steps(monkeypatch, tmp_path):
    from dagster_k8s import k8s_job_executor

    defs = _load_definitions(monkeypatch, tmp_path, "cluster")
    for name in ("ingest_job", "search_refresh_job", "rescan_job"):
        assert defs.resolve_job_def(name).executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn

    ingest = defs.resolve_job_def("ingest_job")
    for op_name in ("image_embeddings", "report_embeddings"):
        pod = _step_pod(ingest, op_name)
        assert _gpus(pod) == {"requests": "1", "limits": "1"}
        # GPU node pools are tainted; without the toleration the pod would never be scheduled.
        assert any((t.key, t.operator, t.effect) == ("nvidia.com/gpu", "Exists", "NoSchedule")
                   for t in pod.tolerations)
        # The NIM key, AWS credentials and the pseudonym key reach the step pods from one Secret.
        assert [e.secret_ref.name for e in pod.containers[0].env_from if e.secret_ref] == ["medvec-secrets"]
    # Normalisation runs on CPU nodes: only the gpu pool asks for a GPU.
    assert _gpus(_step_pod(ingest, "normalized_images")) == {"requests": None, "limits": None}
    # The model's device is picked per pod: the GPU where the step has one, the CPU in the refresh steps.
    embedder = defs.resources["embedder"]
    assert isinstance(embedder, LocalEmbedderResource) and embedder.device == "auto"


def test_cluster_with_a_remote_nim_asks_no_gpu_for_the_embedding_steps(monkeypatch, tmp_path):
    defs = _load_definitions(monkeypatch, tmp_path, "cluster", MEDVEC_EMBEDDER="nim",
                             MEDVEC_NIM_URL="http://nim.medvec.svc:8000")
    assert _executor_config(defs.resolve_job_def("ingest_job"))["per_step_k8s_config"] == {}
    assert isinstance(defs.resources["embedder"], NimEmbedderResource)


def test_cluster_executor_settings_come_from_the_environment(monkeypatch, tmp_path):
    defs = _load_definitions(monkeypatch, tmp_path, "cluster", MEDVEC_K8S_NAMESPACE="medvec-runs",
                             MEDVEC_K8S_GPUS_PER_STEP="2", MEDVEC_K8S_ENV_SECRETS="medvec-secrets, nim-key",
                             MEDVEC_K8S_IMAGE_PULL_POLICY="Always")
    ingest = defs.resolve_job_def("ingest_job")
    config = _executor_config(ingest)
    assert config["job_namespace"] == "medvec-runs" and config["image_pull_policy"] == "Always"
    pod = _step_pod(ingest, "image_embeddings")
    assert _gpus(pod) == {"requests": "2", "limits": "2"}
    assert [e.secret_ref.name for e in pod.containers[0].env_from if e.secret_ref] == ["medvec-secrets", "nim-key"]


@dg.asset
def _device_probe(embedder: LocalEmbedderResource) -> str:
    return embedder.device


def test_gpu_box_runs_the_local_model_on_cuda_a_few_steps_at_a_time(monkeypatch, tmp_path):
    # Loading needs no GPU: only a run on a machine without CUDA would fail.
    defs = _load_definitions(monkeypatch, tmp_path, "gpu-box", HF_TOKEN="hf-secret")
    embedder = defs.resources["embedder"]
    assert isinstance(embedder, LocalEmbedderResource) and embedder.device == "cuda"
    assert isinstance(embedder.hf_token, dg.EnvVar)  # still the variable, never its value
    assert _executor_config(defs.resolve_job_def("ingest_job"))["max_concurrent"] == 4
    result = dg.materialize([_device_probe], resources={"embedder": embedder})
    assert result.output_for_node("_device_probe") == "cuda"  # what a run really gets, not just the UI


def test_nim_profile_embeds_remotely_with_the_key_as_an_env_var(monkeypatch, tmp_path):
    defs = _load_definitions(monkeypatch, tmp_path, "nim", NVIDIA_API_KEY="nvapi-secret-value")
    embedder = defs.resources["embedder"]
    assert isinstance(embedder, NimEmbedderResource) and embedder.url == "http://127.0.0.1:9/v1"
    assert isinstance(embedder.api_key, dg.EnvVar) and embedder.api_key.env_var_name == "NVIDIA_API_KEY"
    assert "nvapi-secret-value" not in repr(embedder._convert_to_config_dictionary())


@pytest.mark.parametrize(("env", "message"), [
    ({"MEDVEC_PROFILE": "clustr"}, "choose one of: local, gpu-box, nim, cluster"),
    ({"MEDVEC_PROFILE": "nim"}, "set MEDVEC_NIM_URL"),
    ({"MEDVEC_PROFILE": "cluster", "MEDVEC_HOME": "/data/medvec", "MEDVEC_LANCEDB_URI": "s3://b/lancedb"},
     "MEDVEC_HOME must be an s3:// URI"),
    ({"MEDVEC_PROFILE": "cluster", "MEDVEC_HOME": "s3://b/home"}, "set MEDVEC_LANCEDB_URI"),
    ({"MEDVEC_PROFILE": "cluster", "MEDVEC_HOME": "s3://b/home", "MEDVEC_LANCEDB_URI": "s3://b/lancedb"},
     "set MEDVEC_PSEUDONYM_KEY"),
    ({"MEDVEC_PROFILE": "gpu-box", "MEDVEC_EMBEDDER": "nim"}, "MEDVEC_EMBEDDER=nim contradicts the profile"),
    ({"MEDVEC_PROFILE": "gpu-box", "MEDVEC_MAX_CONCURRENT": "four"}, "MEDVEC_MAX_CONCURRENT must be a whole"),
])
def test_a_profile_that_cannot_load_says_what_to_set(env, message):
    with pytest.raises(ProfileError) as caught:
        profile_from_env(env).executor(env=env)
    assert message in str(caught.value)


def test_no_profile_means_local_with_dagsters_default_executor():
    profile = profile_from_env({})
    assert profile.name == "local"
    assert profile.executor(env={}) is dg.multi_or_in_process_executor


def test_cluster_dagster_yaml_is_a_valid_instance_config(monkeypatch, tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    for variable, value in {"DAGSTER_PG_HOST": "postgres", "DAGSTER_PG_USERNAME": "dagster",
                            "DAGSTER_PG_PASSWORD": "pw", "DAGSTER_PG_DB": "dagster",
                            "DAGSTER_K8S_JOB_NAMESPACE": "medvec", "DAGSTER_K8S_SERVICE_ACCOUNT": "dagster",
                            "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                            "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
                            "DAGSTER_HOME": "/opt/dagster/dagster_home"}.items():
        monkeypatch.setenv(variable, value)
    shutil.copy(CLUSTER / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # raises on any schema error
    assert set(config["storage"]) == {"postgres"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["granularity"] == "op"
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    # The launcher's own schema (checked when the daemon starts it), with its env sources resolved.
    launcher_config = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert launcher_config.success, launcher_config.errors
    assert launcher_config.value["instance_config_map"] == "dagster-instance"
    assert launcher_config.value["env_secrets"] == ["medvec-secrets"]


# Keys as the dagster/dagster chart's values schema names them (helm/dagster/schema in dagster-io/dagster):
# a misspelt key is otherwise ignored by Helm without a word.
CHART_TOP_LEVEL = {"global", "dagsterWebserver", "dagster-user-deployments", "postgresql",
                   "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis", "flower",
                   "ingress", "imagePullSecrets", "computeLogManager", "scheduler", "runLauncher", "pythonLogs",
                   "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount", "retention", "concurrency",
                   "additionalInstanceConfig"}
CHART_USER_DEPLOYMENT = {"name", "image", "port", "dagsterApiGrpcArgs", "codeServerArgs",
                         "includeConfigInLaunchedRuns", "deploymentNamespace", "env", "envConfigMaps", "envSecrets",
                         "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
                         "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels",
                         "volumeMounts", "volumes", "schedulerName", "initContainers", "sidecarContainers",
                         "deploymentStrategy"}
CHART_K8S_RUN_LAUNCHER = {"image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
                          "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
                          "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig"}


def test_helm_values_run_the_code_location_with_the_cluster_profile():
    values = yaml.safe_load((CLUSTER / "values.yaml").read_text())
    assert set(values) <= CHART_TOP_LEVEL
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert set(deployment) <= CHART_USER_DEPLOYMENT
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pipelines.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = deployment["env"]
    assert env["MEDVEC_PROFILE"] == "cluster"
    # The same env, plus the key the medvec-secrets Secret adds, satisfies the profile's own checks.
    assert profile_from_env({**env, "MEDVEC_PSEUDONYM_KEY": "from-the-secret"}).name == "cluster"
    assert {"name": "medvec-secrets"} in deployment["envSecrets"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]["k8sRunLauncher"]) <= CHART_K8S_RUN_LAUNCHER
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    concurrency = values["concurrency"]
    assert concurrency["enabled"] and set(concurrency) <= {"enabled", "pools", "runs"}
    assert set(concurrency["pools"]) <= {"defaultLimit", "granularity", "opGranularityRunBuffer"}
    assert set(concurrency["runs"]) <= {"maxConcurrentRuns", "tagConcurrencyLimits"}
    assert set(values["postgresql"]) <= {"image", "enabled", "postgresqlHost", "postgresqlUsername",
                                         "postgresqlPassword", "postgresqlDatabase", "postgresqlParams",
                                         "postgresqlScheme", "service"}
    # The secret-bearing variables are never written into the values.
    text = (CLUSTER / "values.yaml").read_text()
    for secret in ("NVIDIA_API_KEY:", "AWS_SECRET_ACCESS_KEY:", "MEDVEC_PSEUDONYM_KEY:"):
        assert secret not in text
