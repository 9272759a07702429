"""Loading a table for search: the id → row lookup that replaces a dict, and filters over the compacted
metadata giving the rows a plain Arrow read gives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from medvec.search.image_ids import ImageIds
from medvec.search.images import Filters, ImageSearch
from medvec.tables import database
from medvec.tables.images import image_table_name, open_image_table, upsert_batch
from medvec.tables.records import image_table_schema


def test_every_id_finds_its_own_row_and_unknown_ids_find_none():
    names = ["2.25.1", "2.25.10", "2.25.1000000000000000000000001", "abc", "ab", "a", "zé", "x", "x\0", "0" * 64]
    ids = ImageIds(pa.chunked_array([pa.array(names[:4]), pa.array(names[4:])]))
    assert list(ids) == names and len(ids) == len(names) and ids[6] == "zé" and ids[1:3] == names[1:3]
    assert {name: ids.row_of[name] for name in names} == {name: row for row, name in enumerate(names)}
    for unknown in ("2.25.100", "2.25", "", "abcd", "x\0\0", "0" * 65, "ZÉ"):
        assert ids.row_of.get(unknown) is None and unknown not in ids.row_of
    with pytest.raises(KeyError):
        ids.row_of["missing"]


def test_an_empty_table_has_no_ids():
    ids = ImageIds(pa.array([], pa.string()))
    assert len(ids) == 0 and list(ids) == [] and ids.row_of.get("a") is None


def _table_rows(vectors: np.ndarray) -> pa.Table:
    views, sexes, splits = ("PA", "ap", "LATERAL", None), ("F", "m", None), ("train", "test", "validate")
    rows = [{"image_id": f"2.25.{7919 * i:039d}", "batch": "b1", "source_uri": "", "content_sha256": "x",
             "image_uri": f"images/{i % 5}/{i}.webp", "thumb_uri": "", "source_format": "dicom",
             "study_id": f"2.25.{i // 3:039d}", "view_position": views[i % 4], "modality": ("CR", "dx")[i % 2],
             "labels": [("Edema", "pleural effusion", "No Finding")[i % 3]], "split": splits[i % 3],
             "sex": sexes[i % 3], "extra": "{}", "frames": 1, "width": 1, "height": 1, "vector": v.tolist(),
             "model_id": "synthetic"} for i, v in enumerate(vectors)]
    return pa.Table.from_pylist(rows, schema=image_table_schema(vectors.shape[1]))


@pytest.mark.parametrize("filters", [Filters(), Filters.of(view=["pa"]), Filters.of(view=["AP", "LATERAL"], sex=["M"]),
                                     Filters.of(modality=["DX"], split=["test"]), Filters.of(labels=["Pleural Effusion"]),
                                     Filters.of(sex=["f"], labels=["edema", "no finding"])])
def test_filtered_searches_answer_as_a_plain_read_of_the_table_says(tmp_path, filters):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = open_image_table(database.connect(str(tmp_path / "lancedb")), image_table_name("synthetic"), 16)
    upsert_batch(table, "b1", _table_rows(vectors))
    plain = table.to_arrow().to_pylist()
    wanted = filters.to_json()

    def passes(row: dict) -> bool:
        checks = {"view": ("view_position", str.upper), "modality": ("modality", str.upper),
                  "split": ("split", str), "sex": ("sex", str.lower)}
        for key, (column, case) in checks.items():
            if wanted.get(key) and (row[column] is None or case(row[column]) not in wanted[key]):
                return False
        return not wanted.get("labels") or any(label.lower() in [w.lower() for w in wanted["labels"]]
                                               for label in row["labels"])

    allowed = [r for r in plain if passes(r)]
    query = vectors[3]
    stored = np.array([r["vector"] for r in allowed], dtype=np.float32)
    expected = [allowed[i]["image_id"] for i in np.argsort(-(stored @ query), kind="stable")[:50]]
    search = ImageSearch(str(tmp_path / "lancedb"), "synthetic", refresh_seconds=0)
    result = search.search_vector(query, k=50, filters=filters)
    assert expected and [h.image_id for h in result.hits] == expected
    by_id = {r["image_id"]: r for r in plain}
    for hit in result.hits:  # the metadata a hit shows is the stored row's, values as written
        assert hit.metadata["view_position"] == by_id[hit.image_id]["view_position"]
        assert hit.metadata["sex"] == by_id[hit.image_id]["sex"] and hit.metadata["labels"] == by_id[hit.image_id]["labels"]
