"""Registry, tiny offline models, and the transformers embedder against the models' own forward pass."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, SiglipImageProcessorPil

from medvec.embedders.base import EmbedderError
from medvec.embedders.transformers_local import TransformersEmbedder
from medvec.models.registry import REGISTRY, model_rows, resolve_model
from medvec.models.tiny import build_tiny_clip, build_tiny_siglip

TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process", "enlarged cardiac silhouette"]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("m") / "tiny-siglip")


@pytest.fixture(scope="module")
def siglip(siglip_dir):
    return TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir)


def _webp(seed: int, shape=(90, 70)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def _rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_registry_entries_are_consistent():
    assert set(REGISTRY) == {"siglip-base", "siglip-so400m", "medsiglip", "clip-b32", "biomedclip", "nvclip",
                             "tiny-siglip", "tiny-biomedclip"}
    for spec in REGISTRY.values():
        assert spec.dim > 0 and spec.image_size > 0 and spec.slug.replace("_", "").isalnum()
        assert spec.loader in {"transformers", "open_clip", "nim"}
        assert spec.text_padding == "max_length" or "siglip" not in spec.name
    assert REGISTRY["medsiglip"].gated and REGISTRY["medsiglip"].resize == "pad_square"
    assert [s.name for s in REGISTRY.values() if s.no_retrieval_quality] == ["tiny-siglip", "tiny-biomedclip"]


def test_resolve_model_by_name_override_or_hub_id():
    assert resolve_model("siglip-base").dim == 768
    assert resolve_model("siglip-base", revision="abc123").revision == "abc123"
    custom = resolve_model("my-org/chest-siglip", dim=768, image_size=224)
    assert custom.loader == "transformers" and custom.model_id == "my-org/chest-siglip" and custom.slug == "chest_siglip"
    with pytest.raises(KeyError, match="known: siglip-base"):
        resolve_model("siglip-bass")
    with pytest.raises(KeyError, match="dim and image_size"):
        resolve_model("my-org/unknown")


def test_models_listing_says_what_this_machine_can_run(monkeypatch):
    monkeypatch.delenv("MEDVEC_NIM_URL", raising=False)
    rows = {row["name"]: row for row in model_rows()}
    assert rows["tiny-siglip"]["available"] and rows["tiny-siglip"]["no_retrieval_quality"]
    assert not rows["medsiglip"]["available"] and "HF_TOKEN" in rows["medsiglip"]["why_not"]
    assert not rows["nvclip"]["available"] and "MEDVEC_NIM_URL" in rows["nvclip"]["why_not"]


def test_tiny_model_builds_are_deterministic_and_idempotent(tmp_path, siglip_dir):
    again = build_tiny_siglip(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (siglip_dir / "model.safetensors").read_bytes()
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    build_tiny_siglip(tmp_path / "again")
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert "no retrieval quality" in (again / "MEDVEC_TINY_MODEL.txt").read_text().lower()


def test_embeddings_equal_the_models_own_forward_pass(siglip, siglip_dir):
    images = [_webp(i) for i in range(3)]
    pixel_values = SiglipImageProcessorPil.from_pretrained(siglip_dir)([_rgb(d) for d in images],
                                                                        return_tensors="pt")["pixel_values"]
    prepared = np.stack([siglip.image_preparer()(d) for d in images])
    np.testing.assert_allclose(prepared, pixel_values.numpy(), atol=1e-5)
    ids = AutoTokenizer.from_pretrained(siglip_dir)(TEXTS, padding="max_length", max_length=64,
                                                     return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = siglip.model(input_ids=ids, pixel_values=pixel_values)
    np.testing.assert_allclose(siglip.embed_images(images), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(siglip.embed_texts(TEXTS), out.text_embeds.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(siglip.embed_texts(TEXTS), axis=1), 1.0, atol=1e-5)


def test_siglip_text_is_padded_to_64_not_to_the_longest(siglip, siglip_dir):
    ids = AutoTokenizer.from_pretrained(siglip_dir)(TEXTS, padding="longest", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        longest = siglip.model.get_text_features(input_ids=ids).pooler_output
    longest = longest.numpy() / np.linalg.norm(longest.numpy(), axis=1, keepdims=True)
    assert np.abs(siglip.embed_texts(TEXTS) - longest).max() > 1e-2


def test_an_images_embedding_does_not_depend_on_its_batch(siglip):
    images = [_webp(i) for i in range(5)]
    alone = siglip.embed_images(images[:1])
    np.testing.assert_allclose(siglip.embed_images(images)[:1], alone, atol=1e-5)
    siglip.batch_size = 2  # chunking must not change results either
    np.testing.assert_allclose(siglip.embed_images(images)[:1], alone, atol=1e-5)
    siglip.batch_size = 32


def test_clip_path_pads_to_longest_and_centre_crops(tmp_path):
    model_dir = build_tiny_clip(tmp_path / "tiny-clip")
    clip = TransformersEmbedder(resolve_model("clip-b32", dim=32, image_size=32), model_dir)
    images = [_webp(i, (90, 60)) for i in range(2)]
    pixel_values = CLIPImageProcessorPil.from_pretrained(model_dir)([_rgb(d) for d in images],
                                                                     return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(np.stack([clip.image_preparer()(d) for d in images]), pixel_values.numpy(), atol=1e-5)
    tokens = AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = clip.model(**tokens, pixel_values=pixel_values)
    np.testing.assert_allclose(clip.embed_texts(TEXTS), out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(clip.embed_images(images), out.image_embeds.numpy(), atol=1e-5)


def test_a_model_of_the_wrong_dimension_is_refused(siglip_dir):
    with pytest.raises(EmbedderError, match="999-d embeddings but the model .* gives 64-d"):
        TransformersEmbedder(resolve_model("tiny-siglip", dim=999), siglip_dir)


def test_pad_square_preparation_keeps_the_aspect_ratio():
    from medvec.embedders.transformers_local import PixelPreparer

    wide = Image.new("L", (100, 50), 255)
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    pixels = PixelPreparer(20, (0.5,) * 3, (0.5,) * 3, "pad_square", "bilinear")(buffer.getvalue())
    assert pixels.shape == (3, 20, 20)
    assert pixels[0, 0, 10] == pytest.approx(-1.0) and pixels[0, 10, 10] == pytest.approx(1.0)  # black pad, white image
