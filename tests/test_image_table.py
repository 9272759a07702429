"""Per-model LanceDB tables: exact per-batch upserts, concurrent writers, dimension mismatches."""

import multiprocessing

import numpy as np
import pytest

from medvec.tables import database
from medvec.ingest.embed import check_vectors
from medvec.tables.images import (TableDimensionMismatch, image_rows, image_table_name, open_image_table,
                                upsert_batch)
from medvec.tables.records import ImageRecord


def _records(batch: str, ids: list[str]) -> list[ImageRecord]:
    return [ImageRecord(image_id=i, batch=batch, source_uri=f"/src/{i}.dcm", content_sha256=i * 2,
                        image_uri=f"images/{i}.webp", thumb_uri=f"thumbs/{i}.webp", source_format="dicom",
                        labels=["Edema"], view_position="PA") for i in ids]


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(db_uri: str, batch: str, ids: list[str], dim: int = 8, seed: int = 0) -> None:
    db = database.connect(db_uri)
    table = open_image_table(db, image_table_name("tiny"), dim)
    rows = image_rows(_records(batch, ids), _vectors(len(ids), dim, seed), dim=dim, model_id="m", revision="r")
    upsert_batch(table, batch, rows)


def _ids(db_uri: str) -> list[str]:
    table = database.connect(db_uri).open_table(image_table_name("tiny"))
    return sorted(table.to_arrow().column("image_id").to_pylist())


def test_reupserting_a_batch_leaves_the_row_count_unchanged(tmp_path):
    uri = str(tmp_path / "db")
    _write(uri, "b1", ["a", "b", "c"])
    _write(uri, "b2", ["d"])
    _write(uri, "b1", ["a", "b", "c"], seed=1)
    assert _ids(uri) == ["a", "b", "c", "d"]
    table = database.connect(uri).open_table("images__tiny")
    row = table.search().where("image_id = 'a'").limit(1).to_list()[0]
    assert row["labels"] == ["Edema"] and row["model_id"] == "m" and len(row["vector"]) == 8


def test_a_batch_rewrite_drops_only_that_batchs_vanished_rows(tmp_path):
    uri = str(tmp_path / "db")
    _write(uri, "b1", ["a", "b", "c"])
    _write(uri, "b2", ["d", "e"])
    _write(uri, "b1", ["a", "c"])
    assert _ids(uri) == ["a", "c", "d", "e"]


def test_dimension_mismatch_is_a_clear_error_and_the_table_is_untouched(tmp_path):
    uri = str(tmp_path / "db")
    _write(uri, "b1", ["a", "b"], dim=8)
    db = database.connect(uri)
    version = db.open_table("images__tiny").version
    with pytest.raises(TableDimensionMismatch, match="8-d vectors but this model gives 16-d"):
        open_image_table(db, "images__tiny", 16)
    assert db.open_table("images__tiny").version == version and _ids(uri) == ["a", "b"]


@pytest.mark.slow
def test_concurrent_writers_of_the_same_new_ids_leave_no_duplicates(tmp_path):
    uri = str(tmp_path / "db")
    _write(uri, "seed", ["z"])  # the table and its primary key exist before the race
    ids = [f"id{i:04d}" for i in range(300)]
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(uri, "b1", ids)) for _ in range(4)]
    writers += [context.Process(target=_write, args=(uri, "b2", [f"x{i}" for i in range(100)]))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    found = _ids(uri)
    assert len(found) == len(set(found)) == 300 + 100 + 1


def test_vector_checks_catch_nan_zero_and_wrong_shape():
    good = _vectors(3)
    assert check_vectors(good, 8) == []
    bad = good.copy()
    bad[0, 0] = np.nan
    bad[1] = 0
    problems = check_vectors(bad, 8)
    assert any("NaN" in p for p in problems) and any("zeros" in p for p in problems)
    assert "expected (n, 16)" in check_vectors(good, 16)[0]


def test_losing_the_table_creation_race_opens_the_winners_table(tmp_path):
    """The race, made deterministic: another writer creates the table and sets its primary key between this
    writer's "is it there?" and its create_table (LanceDB then says "Schema Error")."""
    from medvec.tables.images import _create_image_table

    uri = str(tmp_path / "db")
    _write(uri, "winner", ["w"])  # the winner: table, primary key, one row
    table = _create_image_table(database.connect(uri), image_table_name("tiny"), 8)
    upsert_batch(table, "loser", image_rows(_records("loser", ["l"]), _vectors(1), dim=8, model_id="m",
                                            revision="r"))
    assert _ids(uri) == ["l", "w"]


def _write_after(barrier, db_uri: str, batch: str, ids: list[str]) -> None:
    barrier.wait(60)  # every writer reaches open_image_table together, with no table yet
    _write(db_uri, batch, ids)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(5))
def test_writers_racing_to_create_the_table_all_land(tmp_path, round_):
    uri = str(tmp_path / "db")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    writers = [context.Process(target=_write_after, args=(barrier, uri, f"b{w}", [f"w{w}-{i}" for i in range(20)]))
               for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert len(_ids(uri)) == 3 * 20


def _write_reports_after(barrier, db_uri: str, batch: str) -> None:
    from medvec.reports.parse import ReportRecord
    from medvec.reports.tables import open_report_table, upsert_batch_reports

    records = [ReportRecord(f"{batch}-{i}", batch, f"/r/{batch}/{i}.txt", "mimic", f"s{i}", impression="clear")
               for i in range(10)]
    barrier.wait(60)  # every writer reaches open_report_table together, with no table yet
    table = open_report_table(database.connect(db_uri), "reports_tiny", 8)
    upsert_batch_reports(table, batch, records, _vectors(10), "m")


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_writers_racing_to_create_the_reports_table_all_land(tmp_path, round_):
    """Batch runs of one home write their reports at once: the report table's creation races as the
    image table's does, and every writer's reports land."""
    uri = str(tmp_path / "db")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    writers = [context.Process(target=_write_reports_after, args=(barrier, uri, f"b{w}")) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert database.connect(uri).open_table("reports_tiny").count_rows() == 3 * 10

