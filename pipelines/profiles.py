"""Deployment profiles, chosen by MEDVEC_PROFILE: the same assets everywhere, only the executor and the
resources' defaults change (local machine, one GPU box, a remote NIM, a Kubernetes cluster)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from medvec.settings import Settings, get_settings
from resources.embedders import EmbedderResource, embedder_resource

DEFAULT_PROFILE = "local"
#: The pool the embedding steps declare (`pool="gpu"`): on the cluster these steps get a GPU.
GPU_POOL = "gpu"


class ProfileError(ValueError):
    """The chosen profile cannot load with this environment; the message says what to set."""


@dataclass(frozen=True)
class Requirement:
    """An environment variable a profile cannot run without."""

    variable: str
    example: str
    s3: bool = False  # the value must be an s3:// URI (state shared by pods on several machines)

    def problem(self, env: Mapping[str, str]) -> str | None:
        value = env.get(self.variable) or ""
        if not value:
            return f"set {self.variable} (e.g. {self.variable}={self.example})"
        if self.s3 and not value.startswith("s3://"):
            # Each step runs in its own pod, maybe on another node: a local path would be a different,
            # empty folder in every pod.
            return f"{self.variable} must be an s3:// URI (e.g. {self.example}), not {value!r}"
        return None


#: (environment, names of the steps that need a GPU) -> the executor every job of the code location uses.
ExecutorFactory = Callable[[Mapping[str, str], Sequence[str]], dg.ExecutorDefinition]


@dataclass(frozen=True)
class Profile:
    """Where Medvec's runs execute and which embedder defaults fit there."""

    name: str
    description: str
    executor_factory: ExecutorFactory
    embedder_kind: str | None = None  # "local" | "nim"; None: MEDVEC_EMBEDDER decides (local by default)
    device: str = "auto"  # for a local model: auto | cuda | cpu
    requirements: tuple[Requirement, ...] = ()

    def check(self, env: Mapping[str, str]) -> None:
        problems = [p for p in (r.problem(env) for r in self.requirements) if p]
        chosen = (env.get("MEDVEC_EMBEDDER") or "").lower()
        if self.embedder_kind and chosen and chosen != self.embedder_kind:
            problems.append(f"MEDVEC_EMBEDDER={chosen} contradicts the profile, which embeds with "
                            f"{self.embedder_kind}: unset MEDVEC_EMBEDDER or choose another profile")
        if problems:
            raise ProfileError(f"MEDVEC_PROFILE={self.name} ({self.description}) cannot load: "
                               + "; ".join(problems))

    def embedder(self, settings: Settings | None = None) -> EmbedderResource:
        """The embedder resource: MEDVEC_MODEL etc. as always, with this profile's kind and device."""
        return embedder_resource(settings or get_settings(), kind=self.embedder_kind, device=self.device)

    def executor(self, gpu_steps: Sequence[str] = (), env: Mapping[str, str] | None = None
                 ) -> dg.ExecutorDefinition:
        return self.executor_factory(os.environ if env is None else env, list(gpu_steps))


def gpu_steps(assets: Sequence[dg.AssetsDefinition], embedder: EmbedderResource) -> list[str]:
    """The ops in the gpu pool, when a model runs inside them; a remote NIM embeds elsewhere and the
    steps only wait on HTTP, so they ask for no GPU (the pool still bounds the requests in flight)."""
    if not embedder.config().runs_in_process:
        return []
    return [a.op.name for a in assets if a.op.pool == GPU_POOL]


def _default_executor(env: Mapping[str, str], gpu_steps: Sequence[str]) -> dg.ExecutorDefinition:
    # Dagster's own default: a process per step (in process under dg.materialize and `medvec ingest`).
    return dg.multi_or_in_process_executor


def _one_box_executor(env: Mapping[str, str], gpu_steps: Sequence[str]) -> dg.ExecutorDefinition:
    # normalized_images already fans out over every core and the gpu pool lets one embedding step hold
    # the GPU, so a few steps at a time keep the box busy without oversubscribing its CPUs and memory.
    return dg.multiprocess_executor.configured(
        {"max_concurrent": _int(env, "MEDVEC_MAX_CONCURRENT", 4)}, name="gpu_box_multiprocess")


def _k8s_executor(env: Mapping[str, str], gpu_steps: Sequence[str]) -> dg.ExecutorDefinition:
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # the cluster extra is optional for everyone else
        raise ProfileError("MEDVEC_PROFILE=cluster needs dagster-k8s: pip install -e '.[cluster]'") from exc
    gpus = str(_int(env, "MEDVEC_K8S_GPUS_PER_STEP", 1))
    gpu_step_config = {
        # Kubernetes does not overcommit extended resources: a GPU request must equal its limit.
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": gpus},
                                           "limits": {"nvidia.com/gpu": gpus}}},
        # GPU node pools are usually tainted (GKE does so itself) so that CPU pods stay off them.
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]},
    }
    config: dict = {
        # One Secret holds NVIDIA_API_KEY, AWS credentials and MEDVEC_PSEUDONYM_KEY for every step pod.
        "env_secrets": _names(env.get("MEDVEC_K8S_ENV_SECRETS", "medvec-secrets")),
        # Keyed by op name and added here rather than as op tags, so that the GPU request exists only
        # on the cluster and only when a local model runs in the step.
        "per_step_k8s_config": {step: gpu_step_config for step in gpu_steps},
    }
    # Unset, these come from the run launcher / the Helm user deployment (the run pod's own settings).
    optional = {"job_namespace": "MEDVEC_K8S_NAMESPACE", "image_pull_policy": "MEDVEC_K8S_IMAGE_PULL_POLICY",
                "service_account_name": "MEDVEC_K8S_SERVICE_ACCOUNT"}
    config.update({key: env[var] for key, var in optional.items() if env.get(var)})
    if env.get("MEDVEC_K8S_MAX_CONCURRENT"):  # pods per run; the pools bound them across runs
        config["max_concurrent"] = _int(env, "MEDVEC_K8S_MAX_CONCURRENT", 0)
    return k8s_job_executor.configured(config, name="medvec_k8s")


def _int(env: Mapping[str, str], variable: str, default: int) -> int:
    value = env.get(variable) or str(default)
    try:
        return int(value)
    except ValueError:
        raise ProfileError(f"{variable} must be a whole number, not {value!r}") from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("local", "this machine: Dagster's default executor, the embedder MEDVEC_EMBEDDER picks",
            _default_executor),
    Profile("gpu-box", "one machine with a CUDA GPU: a local model on cuda, a few steps at a time",
            _one_box_executor, embedder_kind="local", device="cuda"),
    Profile("nim", "a remote NIM (or medvec embed-server) embeds; this machine runs the rest",
            _default_executor, embedder_kind="nim",
            requirements=(Requirement("MEDVEC_NIM_URL", "http://gpu-box:8000"),)),
    Profile("cluster", "Kubernetes: a pod per step, GPU pods for the gpu pool, state on S3",
            # auto, not cuda: fallback_queries, retrieval_evaluation and search_bundle load the model too,
            # in pods without a GPU (only the gpu pool gets one); they encode a few texts on the CPU.
            _k8s_executor, device="auto",
            requirements=(Requirement("MEDVEC_HOME", "s3://bucket/medvec", s3=True),
                          Requirement("MEDVEC_LANCEDB_URI", "s3://bucket/medvec/lancedb", s3=True),
                          # Shared patient data: never the development key (guessable pseudonyms).
                          Requirement("MEDVEC_PSEUDONYM_KEY", "<a long random secret, from a Secret>"))),
)}


def profile_from_env(environ: Mapping[str, str] | None = None) -> Profile:
    """The profile MEDVEC_PROFILE names (local by default), checked against the environment."""
    env = os.environ if environ is None else environ
    name = (env.get("MEDVEC_PROFILE") or DEFAULT_PROFILE).strip().lower()
    if name not in PROFILES:
        raise ProfileError(f"MEDVEC_PROFILE={name!r} is not a profile; choose one of: {', '.join(PROFILES)}")
    profile = PROFILES[name]
    profile.check(env)
    return profile
