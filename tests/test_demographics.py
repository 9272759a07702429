"""Kept demographics (sex, age group, Fitzpatrick skin type) are image-table columns and search filters:
a dermatology user searches and audits by skin type; a table from before these columns stays readable."""

import json

import numpy as np
import pyarrow as pa
import pytest

from medvec.cli import main
from medvec.search.configured import open_search
from medvec.search.images import Filters
from medvec.tables import database
from medvec.tables.images import image_table_name, open_image_table
from medvec.tables.records import LATER_RECORD_COLUMNS, image_table_schema
from pipelines.ingest import ingest
from resources.embedders import LocalEmbedderResource
from tests.test_dataset_adapters import write_scin

pytestmark = pytest.mark.slow

FST3 = {"-3205742176803893704.png", "-1234567890123456789.png"}  # the female case's two photographs
MALE = {"-4762289084741430925.png"}


def _names(hits) -> set[str]:
    return {hit["image_uri"] for hit in hits}


def test_a_scin_collection_is_searched_and_audited_by_skin_type(tmp_path, settings, dagster_instance, capsys):
    write_scin(tmp_path / "scin")
    summary = ingest(str(tmp_path / "scin"), settings, instance=dagster_instance, workers=1,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    assert not summary.failed_runs and summary.embedded == 3
    table = database.connect(settings.lancedb_uri).open_table(summary.table)
    by_uri = {r["source_uri"].rsplit("/", 1)[-1]: r for r in table.to_arrow().to_pylist()}
    assert {n for n, r in by_uri.items() if r["skin_type"] == "FST3"} == FST3
    uri_of = {by_uri[n]["image_uri"]: n for n in by_uri}

    search = open_search(settings, "tiny-siglip", refresh_seconds=0)
    fst3 = search.search_text("eczema", 10, Filters.of(skin_type="fst3"))  # case does not matter
    assert {uri_of[h.metadata["image_uri"]] for h in fst3.hits} == FST3
    assert all(h.metadata["skin_type"] == "FST3" and h.metadata["sex"] == "female" for h in fst3.hits)
    male = search.search_text("eczema", 10, Filters.of(sex="Male", age_group="age_18_to_29"))
    assert {uri_of[h.metadata["image_uri"]] for h in male.hits} == MALE
    assert not search.search_text("eczema", 10, Filters.of(skin_type="FST6")).hits

    assert main(["search", "eczema", "--skin-type", "FST3", "--sex", "female", "--model", "tiny-siglip", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert {uri_of[u] for u in _names(answer["hits"])} == FST3
    assert answer["query"]["filters"] == {"sex": ["female"], "skin_type": ["FST3"]}


def test_a_table_from_before_the_demographic_columns_reads_them_as_null_and_takes_new_rows(settings):
    db = database.connect(settings.lancedb_uri)
    old_schema = pa.schema([f for f in image_table_schema(4) if f.name not in LATER_RECORD_COLUMNS])
    row = {f.name: None for f in old_schema}
    row.update(image_id="old", batch="b1", source_uri="x", content_sha256="0", image_uri="images/old.webp",
               thumb_uri="thumbs/old.webp", source_format="png", frames=1, labels=[], extra="{}", width=1, height=1,
               vector=[1.0, 0.0, 0.0, 0.0])
    db.create_table(image_table_name("old"), data=pa.Table.from_pylist([row], schema=old_schema))

    table = open_image_table(db, image_table_name("old"), 4)
    assert set(LATER_RECORD_COLUMNS) <= set(table.schema.names)
    [stored] = table.to_arrow().to_pylist()
    assert (stored["image_id"], stored["sex"], stored["age_group"], stored["skin_type"]) == ("old", None, None, None)
    new = dict(stored, image_id="new", batch="b2", skin_type="FST2", vector=list(np.eye(4, dtype=np.float32)[1]))
    table.add(pa.Table.from_pylist([new], schema=table.schema))
    assert sorted(table.to_arrow().column("skin_type").to_pylist(), key=str) == ["FST2", None]
