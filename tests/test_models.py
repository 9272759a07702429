"""The model registry, `medvec models` rows, and the tiny offline model builders."""

import json
import re
from pathlib import Path

import pytest
import torch

from medvec.models.registry import REGISTRY, ModelSpec, model_rows, resolve_model, spec_from_model_dir
from medvec.models.tiny import MARKER, build_tiny_clip, build_tiny_siglip


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("m") / "tiny-siglip")


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty default Hugging Face cache, so results do not depend on what this machine downloaded."""
    from huggingface_hub import constants

    (tmp_path / "hub").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return [tmp_path / "hub"]


def _put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    """The layout snapshot_download writes: refs/main names a snapshot folder holding the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, text in files.items():
        (repo / "snapshots" / commit / name).write_text(text)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_registry_entries_are_consistent():
    assert set(REGISTRY) == {"siglip-base", "siglip-so400m", "medsiglip", "clip-b32", "biomedclip", "nvclip",
                             "medvec-demo-clip", "tiny-siglip", "tiny-biomedclip"}
    slugs = [spec.slug for spec in REGISTRY.values()]
    assert len(set(slugs)) == len(slugs) and all(re.fullmatch(r"[a-z0-9_]+", slug) for slug in slugs)
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.dim > 0 and spec.image_size > 0
        assert len(spec.mean) == len(spec.std) == 3
        if "siglip" in name:  # SigLIP was trained on text padded to 64 tokens, mean/std 0.5
            assert (spec.text_padding, spec.text_length, spec.mean) == ("max_length", 64, (0.5,) * 3)
    assert REGISTRY["siglip-base"].slug == "siglip_base"
    assert REGISTRY["medsiglip"].gated and REGISTRY["medsiglip"].resize == "pad_square"
    assert REGISTRY["clip-b32"].text_padding == "longest" and REGISTRY["clip-b32"].resize == "shortest_edge_crop"
    assert REGISTRY["biomedclip"].tokenizer_id == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    assert REGISTRY["biomedclip"].model_id.startswith("hf-hub:") and REGISTRY["biomedclip"].text_length == 256
    assert (REGISTRY["nvclip"].loader, REGISTRY["nvclip"].dim) == ("nim", 1024)
    assert [s.name for s in REGISTRY.values() if s.no_retrieval_quality] == ["tiny-siglip", "tiny-biomedclip"]
    assert all("no retrieval quality" in s.notes for s in REGISTRY.values() if s.no_retrieval_quality)


def test_resolve_model_by_name_override_or_hub_id():
    assert resolve_model("siglip-base") is REGISTRY["siglip-base"]
    pinned = resolve_model("siglip-base", revision="abc123")
    assert pinned.revision == "abc123" and REGISTRY["siglip-base"].revision is None
    custom = resolve_model("My-Org/chest-siglip", dim=768, image_size=224)
    assert (custom.loader, custom.model_id, custom.dim, custom.text_padding) == (
        "transformers", "My-Org/chest-siglip", 768, "max_length")
    # The org is part of the table name, so a fine-tune called "siglip-base" never shares Google's table.
    assert custom.slug == "my_org_chest_siglip"
    assert resolve_model("hospital/siglip-base", dim=768, image_size=224).slug != REGISTRY["siglip-base"].slug


def test_unknown_models_are_refused_in_plain_words(empty_hub_cache):
    with pytest.raises(KeyError, match="known: siglip-base, siglip-so400m"):
        resolve_model("siglip-bass")
    with pytest.raises(KeyError, match="give dim and image_size"):
        resolve_model("my-org/never-downloaded")
    with pytest.raises(TypeError, match="not ModelSpec fields: dims"):
        resolve_model("siglip-base", dims=768)
    with pytest.raises(ValueError, match="resize='stretch'"):
        resolve_model("siglip-base", resize="stretch")


def test_a_models_own_config_describes_it(tmp_path, siglip_dir):
    clip = spec_from_model_dir("my-org/tiny-clip", build_tiny_clip(tmp_path / "clip"))
    assert (clip.dim, clip.image_size, clip.resize, clip.text_padding, clip.text_length) == (
        32, 32, "shortest_edge_crop", "longest", 77)
    assert clip.mean == pytest.approx(REGISTRY["clip-b32"].mean)
    siglip = spec_from_model_dir("my-org/tiny-siglip", siglip_dir)
    tiny = REGISTRY["tiny-siglip"]
    assert (siglip.dim, siglip.image_size, siglip.resize, siglip.resample, siglip.mean) == (
        tiny.dim, tiny.image_size, "squash", "bicubic", (0.5,) * 3)


def test_a_downloaded_hub_model_resolves_from_its_cached_config(tmp_path, empty_hub_cache):
    clip_dir = build_tiny_clip(tmp_path / "clip")
    _put_in_hub_cache(empty_hub_cache[0], "my-org/chest-clip", {
        name: (clip_dir / name).read_text() for name in ("config.json", "preprocessor_config.json")})
    spec = resolve_model("my-org/chest-clip")
    assert (spec.dim, spec.image_size, spec.text_padding, spec.resize) == (32, 32, "longest", "shortest_edge_crop")
    assert resolve_model("my-org/chest-clip", text_length=64).text_length == 64


def test_models_listing_says_what_this_machine_can_run(monkeypatch, empty_hub_cache):
    monkeypatch.delenv("MEDVEC_NIM_URL", raising=False)
    rows = {row["name"]: row for row in model_rows()}
    assert list(rows) == list(REGISTRY)
    assert set(rows["siglip-base"]) == {"name", "model_id", "dim", "image_size", "loader", "gated", "licence",
                                        "no_retrieval_quality", "quality_note", "available", "why_not"}
    json.dumps(list(rows.values()))  # the --json contract
    assert rows["tiny-siglip"]["available"] and rows["tiny-siglip"]["no_retrieval_quality"]
    assert "random weights" in rows["tiny-siglip"]["quality_note"]
    assert rows["medvec-demo-clip"]["available"] and "synthetic" in rows["medvec-demo-clip"]["quality_note"]
    assert not rows["medsiglip"]["available"] and "HF_TOKEN" in rows["medsiglip"]["why_not"]
    assert not rows["siglip-base"]["available"] and "not downloaded" in rows["siglip-base"]["why_not"]
    assert "HF_TOKEN" not in rows["siglip-base"]["why_not"]
    assert not rows["nvclip"]["available"] and "MEDVEC_NIM_URL" in rows["nvclip"]["why_not"]
    try:
        import open_clip  # noqa: F401
    except ImportError:
        assert "biomedclip extra" in rows["biomedclip"]["why_not"]
    else:  # BiomedCLIP needs its BiomedBERT tokenizer repo as well
        assert "BiomedNLP-BiomedBERT" in rows["biomedclip"]["why_not"]

    monkeypatch.setenv("MEDVEC_NIM_URL", "http://gpu-box:8000")
    assert {r["name"]: r for r in model_rows(hub_cache_dirs=empty_hub_cache)}["nvclip"]["available"]


def test_a_downloaded_or_mirrored_model_is_available(tmp_path, siglip_dir, empty_hub_cache):
    # A mirror folder handed in by the caller...
    rows = {r["name"]: r for r in model_rows({"siglip-base": siglip_dir}, hub_cache_dirs=empty_hub_cache)}
    assert rows["siglip-base"]["available"] and rows["siglip-base"]["why_not"] == ""
    # ...or a Hugging Face cache, such as the one Medvec downloads into under its model cache.
    medvec_cache = tmp_path / "medvec-models" / "hub"
    _put_in_hub_cache(medvec_cache, "google/medsiglip-448", {"config.json": "{}"})
    assert not {r["name"]: r for r in model_rows()}["medsiglip"]["available"]
    rows = {r["name"]: r for r in model_rows(hub_cache_dirs=[medvec_cache, None])}
    assert rows["medsiglip"]["available"] and not rows["siglip-so400m"]["available"]


def test_tiny_siglip_builds_are_deterministic_and_idempotent(tmp_path, siglip_dir):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    again = build_tiny_siglip(tmp_path / "again")
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left alone
    assert (again / "model.safetensors").read_bytes() == (siglip_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (siglip_dir / "tokenizer.json").read_bytes()
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_siglip(tmp_path / "again") == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert "no retrieval quality" in (again / MARKER).read_text().lower()


def test_an_interrupted_tiny_build_is_redone(tmp_path, siglip_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a crash left files but no marker
    build_tiny_siglip(broken)
    assert (broken / "model.safetensors").read_bytes() == (siglip_dir / "model.safetensors").read_bytes()


def test_tiny_siglip_tokenizer_pads_like_siglip(siglip_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(siglip_dir, local_files_only=True)
    tokens = tokenizer(["small left pleural effusion"], padding="max_length", max_length=64, truncation=True)
    ids = tokens["input_ids"][0]
    assert len(ids) == 64 and "attention_mask" not in tokens  # SigLIP takes no attention mask
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos and ids[4] == eos and set(ids[4:]) == {eos}  # "</s>" then "</s>" pads


def test_tiny_clip_builds_are_deterministic(tmp_path):
    first, second = build_tiny_clip(tmp_path / "a"), build_tiny_clip(tmp_path / "b")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def test_specs_are_frozen():
    with pytest.raises(Exception):
        REGISTRY["siglip-base"].dim = 1  # type: ignore[misc]
    assert isinstance(resolve_model("tiny-siglip"), ModelSpec)
