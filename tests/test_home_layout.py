"""The Medvec home's layout and table names come from one module, and `medvec reset --yes` empties every
table that module names (images, reports, precomputed answers, errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medvec import home
from medvec.sample.writer import write_sample_data
from medvec.tables import database
from pipelines.ingest import ingest

MEDVEC = str(Path(sys.executable).with_name("medvec"))


def _all_tables(lancedb_uri: str) -> list[str]:
    return sorted(database.connect(lancedb_uri).list_tables().tables)


def test_every_table_name_is_one_medvec_owns():
    slug = "tiny_siglip"
    names = [home.image_table_name(slug), home.report_table_name(slug), home.fallback_table_name(slug),
             home.similar_table_name(slug), home.INGEST_ERRORS_TABLE]
    assert all(home.is_medvec_table(name) for name in names)
    assert home.reports_table_for(home.image_table_name(slug)) == home.report_table_name(slug)
    assert not home.is_medvec_table("someone_elses_table")


def test_reset_yes_leaves_no_medvec_table_after_ingesting_images_and_reports(tmp_path, settings, dagster_instance):
    sample = write_sample_data(tmp_path / "sample", count=12)
    summary = ingest(str(sample.out_dir), settings, instance=dagster_instance)
    assert summary.reports > 0 and summary.indexed
    before = _all_tables(settings.lancedb_uri)
    assert {home.image_table_name("tiny_siglip"), home.report_table_name("tiny_siglip")} <= set(before)

    done = subprocess.run([MEDVEC, "reset", "--yes"], env=dict(os.environ), capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr
    assert "reports__tiny_siglip" in done.stdout
    assert _all_tables(settings.lancedb_uri) == []
    assert not home.index_dir(settings.home, home.image_table_name("tiny_siglip")).exists()
    assert home.batches_dir(settings.home).is_dir()  # batches and WebP files stay for the next ingest
