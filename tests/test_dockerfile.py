"""The container image: the Dockerfile installs what the cluster profile imports, runs as a non-root
user, starts the code server values.yaml asks for, and is the image values.yaml and `make image` name.
Parsed, not built: no container tool is needed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> tuple[dict, list[str]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
             if line.strip() and not line.strip().startswith("#")]
    args = dict(re.match(r"ARG (\w+)=?(.*)", line).groups() for line in lines if line.startswith("ARG "))
    return args, lines


def _user_deployment() -> dict:
    values = yaml.safe_load((ROOT / "deploy/cluster/values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_image_installs_the_cluster_extra_and_what_the_profile_imports():
    args, lines = _dockerfile()
    extras = set(args["MEDVEC_EXTRAS"].split(","))
    assert "cluster" in extras
    assert any(re.search(r'pip install "\.\[\$\{MEDVEC_EXTRAS\}\]"', line) for line in lines)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared)
    installed = " ".join(dep for extra in extras for dep in declared[extra])
    # pipelines/profiles.py's cluster profile: the k8s executor and run launcher, Postgres storage.
    for package in ("dagster-k8s", "dagster-postgres", "psycopg"):
        assert package in installed
    for package in ("medvec", "pipelines", "assets", "resources"):  # the packages pyproject installs
        assert any(line.startswith(f"COPY {package} ") for line in lines)


def test_the_image_runs_as_a_non_root_user():
    _, lines = _dockerfile()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_the_image_starts_the_code_server_values_yaml_names():
    _, lines = _dockerfile()
    [cmd] = [line for line in lines if line.startswith("CMD ")]
    grpc_args = _user_deployment()["dagsterApiGrpcArgs"]
    assert ", ".join(f'"{a}"' for a in grpc_args) in cmd
    assert f'"{_user_deployment()["port"]}"' in cmd


def test_values_yaml_and_make_image_name_the_same_image():
    image = _user_deployment()["image"]
    makefile = (ROOT / "Makefile").read_text()
    assert f"IMAGE ?= {image['repository']}" in makefile
    assert f"IMAGE_TAG ?= {image['tag']}" in makefile


def test_a_cuda_variant_is_a_build_argument():
    args, lines = _dockerfile()
    assert args["VARIANT"] == "cpu"
    assert any('"$VARIANT" = "cuda"' in line for line in lines)
