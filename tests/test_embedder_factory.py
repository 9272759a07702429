"""One embedder factory: Settings become an `EmbedderConfig` in one place (the NIM naming rule included),
`open_embedder` is the only code that picks an implementation, and no caller branches on the kind."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from medvec.embedders.factory import embedder_config, open_embedder, resolve_model_artifact
from medvec.settings import Settings
from resources.embedders import EmbedderResource, embedder_resource

ROOT = Path(__file__).resolve().parents[1]
#: The factory, and the modules that define the implementations it opens.
ALLOWED = {"medvec/embedders/factory.py", "medvec/embedders/nim.py", "medvec/embedders/transformers_local.py",
           "medvec/embedders/open_clip_local.py"}


def _sources():
    for folder in ("medvec", "assets", "resources", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_only_the_factory_constructs_an_embedder():
    found = [f"{name}: {match}" for name, text in _sources() if name not in ALLOWED
             for match in re.findall(r"\b(?:NimEmbedder|TransformersEmbedder|OpenClipEmbedder)\(", text)]
    assert found == []


def test_no_caller_branches_on_the_embedder_kind():
    pattern = re.compile(r"isinstance\([^)]*(?:Nim|Local)EmbedderResource|loader\s*==|\.embedder\s*==\s*\"nim\"|"
                         r"!=\s*\"tiny-siglip\"\s*else\s*\"nvclip\"")
    # The registry answers for its own entries (which library loads them, whether it can run here).
    allowed = ALLOWED | {"medvec/models/registry.py", "medvec/cli.py"}
    found = [f"{name}:{text[:m.start()].count(chr(10)) + 1}" for name, text in _sources() if name not in allowed
             for m in pattern.finditer(text)]
    assert found == []


def test_a_nim_with_no_model_named_serves_nvclip():
    env = {"MEDVEC_EMBEDDER": "nim", "MEDVEC_NIM_URL": "http://gpu-box:8000", "NVIDIA_API_KEY": "nvapi-secret"}
    config = embedder_config(Settings.from_env(env))
    assert (config.kind, config.spec.name, config.loader, config.runs_in_process) == ("nim", "nvclip", "nim", False)
    assert config.api_key == "nvapi-secret" and "nvapi-secret" not in repr(config)
    named = embedder_config(Settings.from_env({**env, "MEDVEC_MODEL": "siglip-base"}))
    assert named.spec.name == "siglip-base" and named.kind == "nim"


def test_a_nim_without_a_url_says_what_to_set():
    with pytest.raises(ValueError, match="MEDVEC_NIM_URL"):
        embedder_config(Settings.from_env({"MEDVEC_EMBEDDER": "nim"}))


def test_the_resource_holds_what_the_factory_was_given_and_secrets_as_env_vars(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    settings = Settings.from_env({"MEDVEC_MODEL": "siglip-base", "HF_TOKEN": "hf_secret"})
    resource = embedder_resource(settings, device="cuda")
    assert isinstance(resource, EmbedderResource) and resource.config().runs_in_process
    assert (resource.model, resource.device) == ("siglip-base", "cuda")
    assert isinstance(resource.hf_token, dg.EnvVar) and "hf_secret" not in repr(resource)
    assert resource.spec() == embedder_config(settings).spec


def test_the_factory_opens_the_configured_local_model(tmp_path):
    config = embedder_config(Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home")}), device="cpu")
    artifact = resolve_model_artifact(config)
    assert Path(artifact.local_dir).is_dir() and artifact.loader == "transformers"
    with open_embedder(config, artifact) as embedder, open_embedder(config) as again:
        vectors = embedder.embed_texts(["pleural effusion"])
        assert vectors.shape == (1, config.spec.dim)
        np.testing.assert_allclose(again.embed_texts(["pleural effusion"]), vectors, rtol=1e-5)
