"""The search core on a real ingested collection and on synthetic LanceDB tables: routes, filters,
find-similar, image queries, refresh on new versions, the IVF path and the saved index."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from medvec.tables import database
from medvec.embedders.factory import embedder_config, open_embedder
from medvec.tables.images import image_table_name, open_image_table, upsert_batch
from medvec.search.precompute import FALLBACK_QUERIES, compute_similar
from medvec.tables.records import image_table_schema
from medvec.search.images import Filters, ImageSearch, NoSuchImage, SearchInputError, normalize_query_text
from medvec.search.maintenance import IndexOptions, maintain_table
from medvec.search.vector_index import RowFilter, VectorIndex, exact_top_k, recall_at_k
from tests.conftest import collection_image_id


def _ids(result):
    return [h.image_id for h in result.hits]


# --- on the ingested sample -------------------------------------------------------------------------

def test_a_common_query_answers_from_the_fallback_table_without_an_encoder(search):
    result = search.search_text("Pleural effusion.", k=5)
    assert result.route == "fallback"
    assert search.info()["encoder_loaded"] is False
    assert len(result.hits) == 5 and [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    # The stored answer is what the live index gives for the stored query vector.
    vector = search._current().fallback_vectors[normalize_query_text("pleural effusion")]
    assert _ids(search.search_vector(vector, k=5)) == _ids(result)


def test_filters_restrict_every_hit(search):
    for filters, check in (
        (Filters.of(view=["pa"]), lambda h: h.metadata["view_position"] == "PA"),
        (Filters.of(labels=["Cardiomegaly"]), lambda h: "Cardiomegaly" in h.metadata["labels"]),
        (Filters.of(view=["AP", "LATERAL"], split=["train"]),
         lambda h: h.metadata["view_position"] in ("AP", "LATERAL") and h.metadata["split"] == "train"),
        (Filters.of(modality=["DX"]), lambda h: h.metadata["modality"] == "DX"),
    ):
        result = search.search_text("cardiomegaly", k=50, filters=filters)
        assert result.route == "fallback_vector+index"  # a filtered request still skips the encoder
        assert result.hits and all(check(h) for h in result.hits), filters
        everything = search.search_text("cardiomegaly", k=50)
        expected = [h.image_id for h in everything.hits if check(h)]
        assert _ids(result) == expected  # the filtered ranking is the unfiltered one, restricted
    assert search.search_text("edema", k=5, filters=Filters.of(view=["NO-SUCH-VIEW"])).hits == []


def test_hits_carry_metadata_but_never_source_paths(search):
    hit = search.search_text("edema", k=1).hits[0]
    payload = hit.to_json()
    assert {"image_id", "score", "rank", "view_position", "labels", "split", "study_id", "thumb_uri"} <= set(payload)
    assert "source_uri" not in payload and "vector" not in payload
    assert isinstance(payload["extra"], dict)


def test_find_similar_is_a_lookup_and_matches_the_live_index(search):
    image_id = search.search_text("edema", k=1).hits[0].image_id
    stored = search.similar(image_id, k=5)
    assert stored.route == "similar_images"
    assert image_id not in _ids(stored) and len(stored.hits) == 5
    row = search._current().row_of[image_id]
    live = search._vector_search(search._current(), search._current().index.vectors[row], 5, Filters(), 0.0, {},
                                 "index", exclude_row=row)
    assert _ids(live) == _ids(stored)
    filtered = search.similar(image_id, k=3, filters=Filters.of(view=["LATERAL"]))
    assert filtered.route == "index" and all(h.metadata["view_position"] == "LATERAL" for h in filtered.hits)
    with pytest.raises(NoSuchImage):
        search.similar("no-such-image")


def test_a_novel_text_query_loads_the_models_text_tower(search_collection, search):
    result = search.search_text("small left apical pneumothorax with rib fractures", k=3)
    assert result.route == "index" and search.info()["encoder_loaded"]
    with open_embedder(embedder_config(search_collection.settings)) as embedder:
        vector = embedder.embed_texts(["small left apical pneumothorax with rib fractures"])[0]
    assert _ids(search.search_vector(vector, k=3)) == _ids(result)


def test_an_uploaded_dicom_or_png_finds_its_own_stored_image_first(search_collection, search):
    dicom = sorted((search_collection.sample_dir / "synthetic").rglob("*.dcm"))[3]
    result = search.search_image(dicom.read_bytes(), k=3, filename=dicom.name)
    top = result.hits[0]
    assert top.image_id == collection_image_id(dicom)
    assert top.score == pytest.approx(1.0, abs=1e-3)
    # The same picture as PNG (from the stored WebP) lands on the same image.
    webp = search_collection.settings.home / top.metadata["image_uri"]
    png = io.BytesIO()
    Image.open(webp).save(png, format="PNG")
    assert search.search_image(png.getvalue(), k=1).hits[0].image_id == top.image_id


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"hello, not an image", "could not be read"),
                                          (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "could not be read")])
def test_a_bad_upload_is_a_plain_input_error(search, data, reason):
    with pytest.raises(SearchInputError, match=reason):
        search.search_image(data, k=3)


@pytest.mark.parametrize("k", [0, -1, 501, "ten"])
def test_k_is_checked(search, k):
    with pytest.raises(SearchInputError, match="k must"):
        search.search_text("edema", k=k)


def test_every_fallback_query_is_stored(search):
    loaded = search._current()
    assert len(FALLBACK_QUERIES) >= 50 and len(set(FALLBACK_QUERIES)) == len(FALLBACK_QUERIES)
    assert set(loaded.fallback_hits) == {normalize_query_text(q) for q in FALLBACK_QUERIES}
    assert len(loaded.similar) == len(loaded.ids)


# --- on synthetic tables ------------------------------------------------------------------------------

def _clustered(n: int, dim: int, seed: int = 0, centres: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + rng.standard_normal((n, dim)).astype(np.float32) * 0.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rows(vectors: np.ndarray, batch: str, start: int = 0) -> pa.Table:
    views = ("PA", "AP", "LATERAL")
    rows = [{"image_id": f"img-{start + i:06d}", "batch": batch, "source_uri": f"s/{start + i}", "content_sha256": "x",
             "image_uri": "", "thumb_uri": "", "source_format": "dicom", "view_position": views[(start + i) % 3],
             "modality": "CR", "labels": ["Edema"] if (start + i) % 7 == 0 else [], "split": "train", "extra": "{}",
             "frames": 1, "width": 1, "height": 1, "vector": v.tolist(), "model_id": "synthetic"}
            for i, v in enumerate(vectors)]
    return pa.Table.from_pylist(rows, schema=image_table_schema(vectors.shape[1]))


def test_the_ivf_index_reaches_its_recall_target_with_and_without_filters():
    vectors = _clustered(30_000, 32)
    index = VectorIndex.build(vectors, exact_below=1_000, target_recall=0.98)
    assert index.info.kind == "ivf_pq" and index.info.tuned_recall_at_10 >= 0.98
    rng = np.random.default_rng(5)
    # Queries the tuning never saw: stored rows with noise, and points between two stored rows.
    near = vectors[rng.choice(len(vectors), 50)] + rng.standard_normal((50, 32)).astype(np.float32) * 0.05
    between = vectors[rng.choice(len(vectors), 50)] + vectors[rng.choice(len(vectors), 50)]
    queries = np.concatenate([near, between])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top_k(vectors, queries, 10)
    found = [index.search(q, 10)[1] for q in queries]
    assert recall_at_k(found, truth) >= 0.95
    mask = rng.random(len(vectors)) < 0.3
    allowed = RowFilter(mask)
    truth_rows = allowed.rows[exact_top_k(vectors[allowed.rows], queries, 10)]
    found = [index.search(q, 10, allowed)[1] for q in queries]
    assert all(mask[f].all() for f in found)
    assert recall_at_k(found, truth_rows) >= 0.95
    scores, rows = index.search(queries[0], 10)
    assert np.allclose(scores, vectors[rows] @ queries[0], atol=1e-5)


def test_image_index_builds_lancedb_and_search_indexes_and_search_loads_the_saved_one(tmp_path):
    db = database.connect(str(tmp_path / "lancedb"))
    vectors = _clustered(3_000, 64)
    table = open_image_table(db, image_table_name("synthetic"), 64)
    upsert_batch(table, "b1", _rows(vectors[:2_000], "b1"))
    upsert_batch(table, "b2", _rows(vectors[2_000:], "b2", start=2_000))
    options = IndexOptions(min_rows_for_ann=1_000, search_exact_below=1_000, sample_queries=30)
    report = maintain_table(table, tmp_path, options)
    assert report.rows == 3_000 and report.compaction["versions_after"] <= report.compaction["versions_before"] + 8
    assert report.lancedb_index["type"] == "IVF_RQ" and report.lancedb_index["recall_at_10"] >= 0.98
    assert {"view_position": "bitmap", "labels": "label_list", "image_id": "btree"}.items() <= report.scalar_indexes.items()
    assert report.search_index["kind"] == "ivf_pq" and report.search_index["recall_at_10"] >= 0.95
    saved = json.loads((tmp_path / "indexes" / table.name / f"v{report.version}.json").read_text())

    search = ImageSearch(str(tmp_path / "lancedb"), "synthetic", home=tmp_path, refresh_seconds=0)
    assert search.info()["index"] == saved["info"]  # loaded from disk, not rebuilt
    result = search.search_vector(vectors[10], k=5, filters=Filters.of(view=["PA"], labels=["Edema"]))
    assert result.hits and all(h.metadata["view_position"] == "PA" and h.metadata["labels"] == ["Edema"]
                               for h in result.hits)

    # Re-running changes nothing in the data: same rows, same ids.
    again = maintain_table(table, tmp_path, options)
    assert again.rows == 3_000 and table.count_rows() == len(set(table.to_arrow().column("image_id").to_pylist()))


def test_search_sees_new_rows_and_drops_stale_precomputed_answers(tmp_path):
    db = database.connect(str(tmp_path / "lancedb"))
    vectors = _clustered(200, 16)
    table = open_image_table(db, image_table_name("synthetic"), 16)
    upsert_batch(table, "b1", _rows(vectors[:100], "b1"))
    search = ImageSearch(str(tmp_path / "lancedb"), "synthetic", refresh_seconds=0)
    assert search.info()["rows"] == 100
    compute_similar(search, k=5)
    assert search.similar("img-000001", k=5).route == "similar_images"

    # Another writer adds a batch: the next query sees it, and the old neighbour lists are not used.
    other = database.connect(str(tmp_path / "lancedb")).open_table(image_table_name("synthetic"))
    upsert_batch(other, "b2", _rows(vectors[100:], "b2", start=100))
    result = search.similar("img-000150", k=5)
    assert search.info()["rows"] == 200 and result.route == "index"
    assert "img-000150" not in _ids(result)
    truth = exact_top_k(vectors, vectors[150:151], 6)[0].tolist()
    assert _ids(result) == [f"img-{r:06d}" for r in truth if r != 150][:5]


def _write_batches(uri: str, batches: list[int], halfway=None, resume=None) -> None:
    db = database.connect(uri)
    table = db.open_table(image_table_name("synthetic"))
    vectors = _clustered(len(batches) * 300, 64, seed=3)
    for i, b in enumerate(batches):
        upsert_batch(table, f"b{b}", _rows(vectors[i * 300:(i + 1) * 300], f"b{b}", start=b * 1_000))
        if halfway is not None and i == len(batches) // 2:  # a barrier: maintenance runs while we are mid-way
            halfway.set()
            assert resume.wait(300), "maintenance never let the writer go on"


def test_maintenance_while_another_process_writes_loses_and_duplicates_nothing(tmp_path):
    import multiprocessing as mp

    uri = str(tmp_path / "lancedb")
    table = open_image_table(database.connect(uri), image_table_name("synthetic"), 64)
    upsert_batch(table, "b0", _rows(_clustered(2_000, 64), "b0"))
    context = mp.get_context("spawn")
    halfway, resume = context.Event(), context.Event()
    writer = context.Process(target=_write_batches, args=(uri, list(range(10, 40)), halfway, resume))
    writer.start()
    options = IndexOptions(min_rows_for_ann=1_000, search_exact_below=1_000, sample_queries=10)
    rounds = 0
    try:
        # Barriers, not timing: one round with the writer paused mid-way, then rounds while it commits the
        # rest, and one after it ended; however slow the machine, maintenance meets a half-written table.
        assert halfway.wait(300), "the writer never got half-way"
        maintain_table(table, tmp_path, options)
        rounds += 1
        resume.set()
        while writer.is_alive() or rounds < 3:
            maintain_table(table, tmp_path, options)
            rounds += 1
    finally:
        resume.set()
        writer.join(timeout=300)
    assert writer.exitcode == 0
    table.checkout_latest()
    ids = table.to_arrow().column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 2_000 + 30 * 300
    search = ImageSearch(uri, "synthetic", home=tmp_path, refresh_seconds=0)
    assert search.info()["rows"] == len(ids)


def test_a_missing_index_builds_in_the_background_while_queries_answer_exactly(tmp_path):
    db = database.connect(str(tmp_path / "lancedb"))
    vectors = _clustered(3_000, 32)
    table = open_image_table(db, image_table_name("synthetic"), 32)
    upsert_batch(table, "b1", _rows(vectors, "b1"))
    building, release = threading.Event(), threading.Event()

    def held_build(matrix):
        building.set()
        assert release.wait(timeout=120), "the test never released the build"
        return VectorIndex.build(matrix, exact_below=1_000)

    search = ImageSearch(str(tmp_path / "lancedb"), "synthetic", refresh_seconds=0, exact_below=1_000,
                         build_index=held_build)
    assert search.info()["index"]["kind"] == "exact" and building.wait(timeout=120)
    truth = exact_top_k(vectors, vectors[7:8], 10)[0]
    while_building = search.search_vector(vectors[7], k=10)
    assert while_building.route == "index" and _ids(while_building) == [f"img-{r:06d}" for r in truth]
    assert not search.wait_for_index(timeout=0)
    release.set()
    assert search.wait_for_index(timeout=120)
    assert search.info()["index"]["kind"] == "ivf_pq"
    assert search.search_vector(vectors[7], k=10).route == "index:ivf_pq"


def test_loading_reads_every_row_once_in_table_order_with_its_own_vector(tmp_path):
    from medvec.search.loading import read_table

    db = database.connect(str(tmp_path / "lancedb"))
    vectors = _clustered(700, 8)
    table = open_image_table(db, image_table_name("synthetic"), 8)
    for start in range(0, 700, 250):  # several fragments, batches smaller than a fragment
        upsert_batch(table, f"b{start}", _rows(vectors[start:start + 250], f"b{start}", start=start))
    ids, loaded, meta = read_table(table, batch_rows=64)
    ids = list(ids)
    assert sorted(ids) == [f"img-{i:06d}" for i in range(700)] and meta.num_rows == 700
    assert meta.column("image_id").to_pylist() == ids
    rows = [int(i[4:]) for i in ids]
    assert loaded.dtype == np.float32 and np.array_equal(loaded, vectors[rows])


def test_loading_matches_a_plain_arrow_read_across_fragments_and_deleted_rows(tmp_path):
    from medvec.search.loading import HIT_COLUMNS, read_table

    db = database.connect(str(tmp_path / "lancedb"))
    vectors = _clustered(900, 8, seed=3)
    table = open_image_table(db, image_table_name("synthetic"), 8)
    for start in range(0, 900, 300):  # three appends: three fragments
        upsert_batch(table, f"b{start}", _rows(vectors[start:start + 300], f"b{start}", start=start))
    gone = [f"img-{i:06d}" for i in (*range(0, 900, 7), *range(300, 340))]  # scattered rows and a whole run
    table.delete("image_id IN (" + ", ".join(f"'{i}'" for i in gone) + ")")
    # Re-running batch b600 with 50 new vectors: those rows move to a new fragment, the rest of it is deleted.
    upsert_batch(table, "b600", _rows(_clustered(50, 8, seed=4), "b600", start=600))
    plain = table.to_arrow()
    ids, loaded, meta = read_table(table, batch_rows=64)  # pages smaller than, and across, fragments
    ids = list(ids)
    assert ids == plain.column("image_id").to_pylist() and len(set(ids)) == len(ids) == plain.num_rows
    kept = {f"img-{i:06d}" for i in range(600)} - set(gone) | {f"img-{i:06d}" for i in range(600, 650)}
    assert set(ids) == kept and len(ids) == 530
    expected = np.asarray(plain.column("vector").combine_chunks().flatten().to_numpy()).reshape(-1, 8)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, expected)
    # Few-valued strings come back as dictionaries: the same values, read as plain ones.
    assert meta.to_pylist() == plain.select([c for c in HIT_COLUMNS if c in plain.schema.names]).to_pylist()
