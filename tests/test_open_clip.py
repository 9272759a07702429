"""The open_clip (BiomedCLIP) path: a tiny BiomedCLIP-shaped model built offline, loaded the way
users load BiomedCLIP. Needs the biomedclip extra; CI runs it in its own venv (`make test-biomedclip`)."""

import io

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip", reason="biomedclip extra not installed (make test-biomedclip)")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medvec.embedders.base import EmbedderError  # noqa: E402
from medvec.embedders.open_clip_local import OpenClipEmbedder  # noqa: E402
from medvec.models.registry import resolve_model  # noqa: E402
from medvec.models.tiny import build_tiny_biomedclip  # noqa: E402

TEXTS = ["small left pleural effusion", "cardiomegaly", "no acute cardiopulmonary process"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_biomedclip(tmp_path_factory.mktemp("m") / "tiny-biomedclip")


def _webp(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (300, 241), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_embeddings_equal_open_clips_own_encoders(model_dir):
    reference, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{model_dir}")
    reference.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    embedder = OpenClipEmbedder(resolve_model("tiny-biomedclip"), model_dir)
    images = [_webp(i) for i in range(3)]
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])
    np.testing.assert_allclose(np.stack([embedder.image_preparer()(d) for d in images]), pixels.numpy(), atol=1e-5)
    with torch.no_grad():
        image_ref = reference.encode_image(pixels, normalize=True).numpy()
        text_ref = reference.encode_text(tokenizer(TEXTS, context_length=256), normalize=True).numpy()
    np.testing.assert_allclose(embedder.embed_images(images), image_ref, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_texts(TEXTS), text_ref, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_images(images[:1]), image_ref[:1], atol=1e-5)  # batch-independent


def test_wrong_dimension_is_refused(model_dir):
    with pytest.raises(EmbedderError, match="512-d embeddings but the model .* gives 32-d"):
        OpenClipEmbedder(resolve_model("biomedclip"), model_dir)


def test_ingest_embeds_with_the_open_clip_backend(tmp_path, settings, dagster_instance):
    import shutil

    from medvec.tables import database
    from pipelines.ingest import ingest
    from resources.embedders import LocalEmbedderResource
    from tests.conftest import dicom_testfile

    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(dicom_testfile(name), folder / name)
    summary = ingest(str(folder), settings, instance=dagster_instance,
                     embedder=LocalEmbedderResource(model="tiny-biomedclip"))
    assert not summary.failed_runs and summary.embedded == 2 and summary.table == "images__tiny_biomedclip"
    assert database.connect(settings.lancedb_uri).open_table(summary.table).count_rows() == 2


def test_tiny_biomedclip_builds_are_deterministic(tmp_path, model_dir):
    again = build_tiny_biomedclip(tmp_path / "again")
    name = "open_clip_model.safetensors"
    assert (again / name).read_bytes() == (model_dir / name).read_bytes()
