"""TransformersEmbedder against the models' own forward pass and image processors, on tiny models built offline."""

import io
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from medvec.embedders.base import EmbedderError
from medvec.embedders.transformers_local import PixelPreparer, TransformersEmbedder
from medvec.models.registry import resolve_model
from medvec.models.tiny import build_tiny_clip, build_tiny_siglip

TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process", "enlarged cardiac silhouette",
         "normal chest"]
# Portrait, landscape, square, smaller than the model input, and odd sizes (centre-crop rounding).
SHAPES = [(90, 70), (61, 97), (48, 48), (20, 13), (77, 33)]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("m") / "tiny-siglip")


@pytest.fixture(scope="module")
def siglip(siglip_dir):
    return TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("m") / "tiny-clip")


@pytest.fixture(scope="module")
def clip(clip_dir):
    # The clip-b32 recipe (longest padding, CLIP mean/std, shortest edge + centre crop) at tiny size.
    return TransformersEmbedder(resolve_model("clip-b32", dim=32, image_size=32), clip_dir)


def _grey(seed: int, shape=(90, 70), fmt="WEBP") -> bytes:
    """A normalised image as Medvec stores it: 8-bit grey WebP (or PNG)."""
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def _rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _processor_pixels(model_dir, images: list[bytes]) -> torch.Tensor:
    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    return processor([_rgb(d) for d in images], return_tensors="pt")["pixel_values"]


def _prepared(embedder, images: list[bytes]) -> np.ndarray:
    return np.stack([embedder.image_preparer()(d) for d in images])


def test_image_preparation_equals_siglips_image_processor(siglip, siglip_dir):
    images = [_grey(i, shape) for i, shape in enumerate(SHAPES)] + [_grey(9, (40, 30), fmt="PNG")]
    prepared = _prepared(siglip, images)
    assert prepared.dtype == np.float32 and prepared.shape == (len(images), 3, 32, 32)
    np.testing.assert_allclose(prepared, _processor_pixels(siglip_dir, images).numpy(), atol=1e-5)
    assert np.array_equal(prepared[:, 0], prepared[:, 2])  # grey replicated to three channels


def test_image_preparation_equals_clips_image_processor(clip, clip_dir):
    images = [_grey(i, shape) for i, shape in enumerate(SHAPES)]
    np.testing.assert_allclose(_prepared(clip, images), _processor_pixels(clip_dir, images).numpy(), atol=1e-5)


def test_pad_square_matches_googles_zero_pad_then_siglip_processor(siglip_dir):
    """MedSigLIP's serving code centres the image on a black square, then runs SiglipImageProcessor."""
    data = _grey(3, (90, 40))  # 40 wide, 90 tall
    image = _rgb(data)
    square = Image.new("RGB", (90, 90))
    square.paste(image, ((90 - 40) // 2, 0))
    expected = AutoImageProcessor.from_pretrained(siglip_dir)([square], return_tensors="pt")["pixel_values"][0]
    preparer = PixelPreparer(32, (0.5,) * 3, (0.5,) * 3, "pad_square", "bicubic")
    np.testing.assert_allclose(preparer(data), expected.numpy(), atol=1e-5)
    assert preparer(data)[0, 16, 0] == pytest.approx(-1.0)  # the pad is black, not stretched image


def test_the_image_preparer_survives_pickling_for_worker_processes(siglip):
    preparer = siglip.image_preparer()
    data = _grey(1)
    assert np.array_equal(pickle.loads(pickle.dumps(preparer))(data), preparer(data))


def test_sixteen_bit_input_is_refused_not_clipped(siglip):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="8-bit"):
        siglip.image_preparer()(buffer.getvalue())


def test_siglip_embeddings_equal_the_models_own_forward_pass(siglip, siglip_dir):
    images = [_grey(i) for i in range(3)]
    pixel_values = _processor_pixels(siglip_dir, images)
    ids = AutoTokenizer.from_pretrained(siglip_dir)(TEXTS, padding="max_length", max_length=64,
                                                     return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = siglip.model(input_ids=ids, pixel_values=pixel_values)
    image_vectors, text_vectors = siglip.embed_images(images), siglip.embed_texts(TEXTS)
    assert image_vectors.dtype == text_vectors.dtype == np.float32 and image_vectors.shape == (3, siglip.dim)
    np.testing.assert_allclose(image_vectors, out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(text_vectors, out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-5)


def test_siglip_text_is_padded_to_64_not_to_the_longest(siglip, siglip_dir):
    tokenizer = AutoTokenizer.from_pretrained(siglip_dir)

    def forward_text_embeds(**padding):
        ids = tokenizer(TEXTS, truncation=True, return_tensors="pt", **padding)["input_ids"]
        with torch.no_grad():
            return siglip.model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds.numpy()

    ours = siglip.embed_texts(TEXTS)
    np.testing.assert_allclose(ours, forward_text_embeds(padding="max_length", max_length=64), atol=1e-5)
    assert np.abs(ours - forward_text_embeds(padding="longest")).max() > 1e-2
    # Fixed-length padding also makes a text's vector independent of the other texts in its batch.
    np.testing.assert_allclose(siglip.embed_texts(TEXTS[:1]), ours[:1], atol=1e-5)


def test_an_images_embedding_does_not_depend_on_its_batch(siglip):
    images = [_grey(i) for i in range(3)]
    np.testing.assert_allclose(siglip.embed_images(images)[:1], siglip.embed_images(images[:1]), atol=1e-5)


def test_chunking_keeps_input_order(siglip_dir, siglip):
    images = [_grey(i) for i in range(5)]
    chunked = TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir, batch_size=2)
    np.testing.assert_allclose(chunked.embed_images(images), siglip.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(chunked.embed_texts(TEXTS), siglip.embed_texts(TEXTS), atol=1e-5)


def test_clip_text_pads_to_the_longest_and_truncates_to_77(clip, clip_dir):
    long_report = " ".join(["small left pleural effusion with blunted costophrenic angle"] * 15)  # > 77 tokens
    texts = TEXTS + [long_report]
    tokens = AutoTokenizer.from_pretrained(clip_dir)(texts, padding="longest", truncation=True, max_length=77,
                                                     return_tensors="pt")
    assert tokens["input_ids"].shape[1] == 77
    images = [_grey(i, (90, 60)) for i in range(2)]
    with torch.no_grad():
        out = clip.model(**tokens, pixel_values=_processor_pixels(clip_dir, images))
    np.testing.assert_allclose(clip.embed_texts(texts), out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(clip.embed_images(images), out.image_embeds.numpy(), atol=1e-5)
    # CLIP pools at the end-of-text token, so padding to the longest is exact: a text alone gives the same vector.
    np.testing.assert_allclose(clip.embed_texts(TEXTS[:1]), clip.embed_texts(texts)[:1], atol=1e-5)


def test_a_model_of_the_wrong_dimension_is_refused(siglip_dir):
    with pytest.raises(EmbedderError, match="999-d embeddings but the model .* gives 64-d"):
        TransformersEmbedder(resolve_model("tiny-siglip", dim=999), siglip_dir)
    with pytest.raises(EmbedderError, match="224 px images but the model .* takes 32 px"):
        TransformersEmbedder(resolve_model("tiny-siglip", image_size=224), siglip_dir)


def test_a_checkpoint_without_a_text_tower_is_refused(tmp_path, siglip, siglip_dir):
    """Fine-tunes saved as SiglipVisionModel or SiglipForImageClassification have no text tower; loading
    the latter as SiglipModel would silently give text random weights."""
    import shutil

    from transformers import SiglipForImageClassification, SiglipVisionModel

    SiglipVisionModel(siglip.model.config.vision_config).save_pretrained(tmp_path / "vision")
    with pytest.raises(EmbedderError, match="not an image-text model"):
        TransformersEmbedder(resolve_model("tiny-siglip"), tmp_path / "vision")
    SiglipForImageClassification(siglip.model.config).save_pretrained(tmp_path / "classifier")
    shutil.copy(siglip_dir / "tokenizer.json", tmp_path / "classifier")
    with pytest.raises(EmbedderError, match="lacks .* weight.*text_model"):
        TransformersEmbedder(resolve_model("tiny-siglip"), tmp_path / "classifier")


def test_runtime_and_dtypes_on_the_cpu(siglip_dir, siglip):
    assert siglip.runtime() == {"device": "cpu", "dtype": "fp32", "batch_size": 32}
    assert (siglip.name, siglip.model_id, siglip.revision) == ("tiny-siglip", "medvec/tiny-siglip", None)
    with pytest.raises(EmbedderError, match="fp16 does not run on the CPU"):
        TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir, dtype="fp16")
    bf16 = TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir, dtype="bf16", revision="sha256:abc")
    assert bf16.runtime()["dtype"] == "bf16" and bf16.revision == "sha256:abc"
    vectors = bf16.embed_texts(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, siglip.embed_texts(TEXTS), atol=5e-2)


def test_empty_inputs_give_empty_results(siglip):
    assert siglip.embed_prepared([]).shape == (0, siglip.dim)
    assert siglip.embed_texts([]).shape == (0, siglip.dim)


def test_out_of_memory_halves_the_batch_and_retries(siglip_dir, monkeypatch, caplog):
    """A GPU running out of memory is simulated: batches above 2 images fail like CUDA does."""
    embedder = TransformersEmbedder(resolve_model("tiny-siglip"), siglip_dir, batch_size=8)
    images = [_grey(i) for i in range(5)]
    expected = embedder.embed_images(images)
    real = embedder.model.get_image_features

    def cramped(pixel_values):
        if len(pixel_values) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pixel_values=pixel_values)

    monkeypatch.setattr(embedder.model, "get_image_features", cramped)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(embedder.embed_images(images), expected, atol=1e-5)
    assert embedder.runtime()["batch_size"] == 2 and "batch size now 2" in caplog.text

    def always_full(pixel_values):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(embedder.model, "get_image_features", always_full)
    with pytest.raises(EmbedderError, match="out of memory .* even one input at a time"):
        embedder.embed_images(images)


def test_googles_sentencepiece_tokenizer_class_pads_to_64_without_a_mask(tmp_path, siglip_dir):
    """Google's SigLIP and MedSigLIP repos ship spiece.model (SiglipTokenizer, not the tiny model's
    WordLevel): it returns an attention mask that SigLIP was trained without, so the embedder drops it."""
    import shutil

    spm = pytest.importorskip("sentencepiece")
    from transformers import SiglipTokenizer

    from medvec.models.tiny import _WORDS

    corpus = tmp_path / "reports.txt"
    corpus.write_text("\n".join(" ".join(_WORDS[i:i + 6]) for i in range(0, len(_WORDS), 2)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=60,
                                   eos_id=1, unk_id=2, pad_id=-1, bos_id=-1, num_threads=1, minloglevel=2)
    model_dir = tmp_path / "google-style"
    shutil.copytree(siglip_dir, model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).unlink()
    SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"), model_max_length=64).save_pretrained(model_dir)

    embedder = TransformersEmbedder(resolve_model("tiny-siglip"), model_dir)
    assert type(embedder.tokenizer).__name__ == "SiglipTokenizer"
    tokens = embedder.tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert tokens["input_ids"].shape == (len(TEXTS), 64) and "attention_mask" in tokens
    with torch.no_grad():
        expected = embedder.model.get_text_features(input_ids=tokens["input_ids"]).pooler_output
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed_texts(TEXTS), expected, atol=1e-5)
