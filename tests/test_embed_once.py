"""Never embed twice: a re-run of finished batches sends the NIM (our own embed-server) no embedding
request and leaves the table as it was; an image whose content changed under the same id is embedded again."""

import shutil

import dagster as dg
import numpy as np
import pydicom
import pytest


from assets.embeddings import embedding_model, image_embeddings
from assets.ingest import normalized_images, source_manifest
from medvec.phi import Pseudonymizer
from medvec.serve.embed_server import EmbedServer
from medvec.tables import database
from pipelines.backfill import backfill
from pipelines.ingest import ingest
from resources import home_resources
from resources.embedders import LocalEmbedderResource, NimEmbedderResource
from tests.conftest import dicom_testfile

pytestmark = pytest.mark.slow

SOURCES = ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEGLSNearLossless_16.dcm",
           "image_dfl.dcm", "rtplan.dcm"]


@pytest.fixture
def nim_server(settings):
    local = LocalEmbedderResource(model="tiny-siglip")
    with local.load(local.resolve(settings.home / "models")) as model, EmbedServer(model) as server:
        yield server


@pytest.fixture
def embedded(tmp_path, settings, dagster_instance, nim_server):
    """Six files (five images) ingested and embedded through the NIM protocol."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in SOURCES:
        shutil.copy(dicom_testfile(name), folder / name)
    nim = NimEmbedderResource(model="tiny-siglip", url=nim_server.url, nim_model="medvec/tiny-siglip")
    summary = ingest(str(folder), settings, batch_size=3, instance=dagster_instance, embedder=nim)
    assert not summary.failed_runs and summary.embedded == 5 and summary.embed_skipped == 0
    return folder, nim, summary


def _rows(settings, table_name) -> list[dict]:
    table = database.connect(settings.lancedb_uri).open_table(table_name)
    return table.to_arrow().sort_by("image_id").to_pylist()


def test_rerunning_finished_batches_sends_no_embedding_request_and_changes_nothing(settings, dagster_instance,
                                                                                    nim_server, embedded):
    _, nim, summary = embedded
    before, requests_before = _rows(settings, summary.table), nim_server.stats["requests"]

    again = backfill(settings, summary.batches, instance=dagster_instance, embedder=nim, refresh=False)
    assert not again.failed_runs and again.embedded == 0 and again.embed_skipped == 5
    one = dg.materialize([embedding_model, source_manifest, normalized_images, image_embeddings],
                         selection=[image_embeddings], partition_key=summary.batches[0], instance=dagster_instance,
                         resources={**home_resources(settings), "embedder": nim})
    metadata = one.asset_materializations_for_node("image_embeddings")[0].metadata
    assert metadata["embedded"].value == 0 and metadata["skipped"].value == metadata["rows_written"].value > 0

    assert nim_server.stats["requests"] == requests_before  # a paid NIM would have cost nothing
    assert _rows(settings, summary.table) == before  # same rows, same vectors, same embedded_at


def test_an_image_with_new_content_under_the_same_id_is_embedded_again(settings, dagster_instance, nim_server,
                                                                       embedded):
    folder, nim, summary = embedded
    before = {row["image_id"]: row for row in _rows(settings, summary.table)}
    dataset = pydicom.dcmread(folder / "CT_small.dcm")
    # Stored under its keyed replacement UID (PS3.15), made with the fixture's key.
    changed_id = Pseudonymizer(settings.pseudonym_key.get_secret_value()).uid(dataset.SOPInstanceUID)
    dataset.PixelData = np.ascontiguousarray(dataset.pixel_array[::-1]).tobytes()  # same id, new content
    dataset.save_as(folder / "CT_small.dcm")
    inputs_before = nim_server.stats["inputs"]

    again = backfill(settings, summary.batches, instance=dagster_instance, embedder=nim, refresh=False)
    assert not again.failed_runs and (again.embedded, again.embed_skipped) == (1, 4)
    assert nim_server.stats["inputs"] == inputs_before + 1  # only the changed image went to the NIM
    after = {row["image_id"]: row for row in _rows(settings, summary.table)}
    assert after.keys() == before.keys()
    assert after[changed_id]["content_sha256"] != before[changed_id]["content_sha256"]
    assert not np.allclose(after[changed_id]["vector"], before[changed_id]["vector"], atol=1e-4)
    assert {k: v for k, v in after.items() if k != changed_id} == {k: v for k, v in before.items() if k != changed_id}
