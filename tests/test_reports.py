"""Reports: the three layouts, sections, the PHI scrub, findings from text, the reports table, BM25 /
vector / hybrid search, images through reports, and `medvec search --reports`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medvec.tables import database
from medvec.ingest.batches import BatchManifest
from medvec.datasets.labels import labels_from_findings_text
from medvec.search.reports import ReportSearch, fuse, make_snippet
from medvec.reports.tables import label_agreement, read_batch_reports
from medvec.reports.parse import is_report_file, parse_indiana, parse_mimic, parse_openi, scrub_report_text, split_sections
from medvec.search.images import Filters
from medvec.sources import SourceFile

MIMIC = b"""                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  Chest radiograph from 02/13/2019.

 FINDINGS:
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:
 No acute cardiopulmonary process.  Findings discussed with Dr. Alberta Quill at 4:15 p.m. on
 March 3, 2019 by telephone, pager 44321, MRN 12345678.
"""

OPENI = b"""<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR1"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Positive TB test</AbstractText>
<AbstractText Label="FINDINGS">The heart is enlarged. There is a small right pleural effusion.</AbstractText>
<AbstractText Label="IMPRESSION">Cardiomegaly and small right effusion.</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>Cardiomegaly/mild</major><major>Pleural Effusion/right/small</major></MeSH>
<parentImage id="CXR1_1_IM-0001-3001"><caption>PA</caption></parentImage>
<parentImage id="CXR1_1_IM-0001-4001"><caption>Lateral</caption></parentImage>
</eCitation>"""

INDIANA_REPORTS = """uid,MeSH,Problems,image,indication,comparison,findings,impression
1,normal,normal,Xray Chest PA and Lateral,Positive TB test,None.,The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. There is no focal consolidation.,Normal chest x-XXXX.
2,Cardiomegaly/borderline;Pulmonary Artery/enlarged,Cardiomegaly;Pulmonary Artery,Chest 2 views,Preop bariatric surgery.,None.,Borderline cardiomegaly.,No acute pulmonary findings.
"""
INDIANA_PROJECTIONS = """uid,filename,projection
1,1_IM-0001-4001.dcm.png,Frontal
1,1_IM-0001-3001.dcm.png,Lateral
2,2_IM-0652-1001.dcm.png,Frontal
"""


# --- parsing and policy ----------------------------------------------------------------------------

def test_a_mimic_report_splits_into_sections_and_links_to_its_study_folder():
    record = parse_mimic(MIMIC, "/data/files/p10/p10000032/s50414267.txt", "b1")
    assert record.layout == "mimic" and record.study_key == "s50414267" and record.study_folder == "s50414267"
    assert record.indication.startswith("___F with new onset ascites")  # the dataset's placeholder is kept
    assert record.findings.startswith("There is no focal consolidation") and "nipple shadows" in record.findings
    assert record.impression.startswith("No acute cardiopulmonary process.")
    assert record.labels == ["No Finding"]  # every finding mentioned is negated
    for identifier in ("Alberta", "Quill", "4:15", "March 3, 2019", "02/13/2019", "44321", "12345678"):
        assert identifier not in record.text and identifier not in record.impression + record.comparison
    assert record.redactions >= 6 and "[name]" in record.impression and "[date]" in record.comparison


def test_an_open_i_report_keeps_mesh_terms_and_names_its_images():
    record = parse_openi(OPENI, "/data/ecgen/1.xml", "b1")
    assert record.study_key == "CXR1" and record.image_names == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert record.mesh == ["Cardiomegaly/mild", "Pleural Effusion/right/small"]
    assert record.labels == ["Cardiomegaly", "Pleural Effusion"]
    assert record.findings == "The heart is enlarged. There is a small right pleural effusion."
    with pytest.raises(ET.ParseError):
        parse_openi(b"<eCitation><unclosed>", "/data/bad.xml", "b1")


def test_the_indiana_pair_links_reports_to_file_names():
    records = parse_indiana(INDIANA_REPORTS, INDIANA_PROJECTIONS, "/data/indiana_reports.csv")
    assert [r.study_key for r in records] == ["1", "2"]
    assert records[0].image_names == ["1_IM-0001-4001.dcm", "1_IM-0001-3001.dcm"]
    assert records[0].labels == ["No Finding"] and records[1].labels == ["Cardiomegaly"]
    assert records[1].indication == "Preop bariatric surgery."


def test_report_files_are_told_apart_from_images():
    assert is_report_file("/x/files/p10/p1/s50414267.txt") and is_report_file("s3://b/ecgen/1.xml")
    assert not is_report_file("/x/broken/notes.txt") and not is_report_file("/x/a.dcm")


@pytest.mark.parametrize("text, gone", [
    ("Called Dr. Smith at 10:30.", ["Smith", "10:30"]),
    ("Discussed with Jane Doe on 2021-03-04.", ["Jane", "2021-03-04"]),
    ("Reachable at 617-555-0134 or jdoe@example.org.", ["617-555-0134", "jdoe@example.org"]),
    ("Accession # A12345 compared with 14 Feb 2020.", ["A12345", "14 Feb 2020"]),
])
def test_the_scrub_removes_dates_names_numbers(text, gone):
    scrubbed, n = scrub_report_text(text)
    assert n >= len(gone) - 1 and not any(g in scrubbed for g in gone), scrubbed


def test_findings_from_text_respect_negation():
    assert labels_from_findings_text("No focal consolidation, pleural effusion or pneumothorax.") == ["No Finding"]
    assert labels_from_findings_text("Small left pleural effusion. No pneumothorax.") == ["Pleural Effusion"]
    assert labels_from_findings_text("Interval placement of an endotracheal tube. Cardiomegaly.") == [
        "Cardiomegaly", "Support Devices"]
    assert split_sections("IMPRESSION: Clear lungs.")["impression"] == "Clear lungs."


def test_fusion_rewards_agreement_between_rankings():
    fused = fuse({"bm25": [("a", 9.0), ("b", 5.0), ("c", 1.0)], "vector": [("c", 0.9), ("a", 0.8)]})
    assert sorted(fused, key=lambda i: -fused[i][0]) == ["a", "c", "b"]
    assert fused["a"][1] == ["bm25", "vector"] and fused["b"][1] == ["bm25"]
    assert fused["a"][0] == pytest.approx(1 / 61 + 1 / 62)


def test_snippets_highlight_the_query_words():
    snippet, spans = make_snippet({"impression": "Small left pleural effusion.", "findings": "Heart normal."},
                                  ["left", "effusion"])
    assert snippet == "Small left pleural effusion." and [snippet[s:e] for s, e in spans] == ["left", "effusion"]


def test_a_batch_reads_its_report_files_and_the_indiana_rows_for_its_images(tmp_path):
    (tmp_path / "files" / "p10" / "p1").mkdir(parents=True)
    (tmp_path / "files" / "p10" / "p1" / "s501.txt").write_bytes(MIMIC)
    (tmp_path / "bad.xml").write_bytes(b"<not-closed>")
    (tmp_path / "indiana_reports.csv").write_text(INDIANA_REPORTS)
    (tmp_path / "indiana_projections.csv").write_text(INDIANA_PROJECTIONS)
    files = [SourceFile(str(p), 1, 0.0) for p in (tmp_path / "files/p10/p1/s501.txt", tmp_path / "bad.xml",
                                                  tmp_path / "2_IM-0652-1001.dcm.png")]
    manifest = BatchManifest(batch="b1", source=str(tmp_path), created_at="", files=files)
    records, errors = read_batch_reports(manifest)
    assert sorted(r.study_key for r in records) == ["2", "s501"]  # Indiana uid 1 names no image of this batch
    assert [(e.stage, e.source_uri.endswith("bad.xml")) for e in errors] == [("report", True)]
    assert "could not be parsed" in errors[0].message


def test_a_pacs_batch_looks_for_no_companion_report_files(caplog):
    """A DICOMweb root holds instances only: no Indiana CSV is asked for, so nothing is logged as unreadable."""
    root = "http://127.0.0.1:9/dicom-web"  # the discard port: any request would fail loudly
    files = [SourceFile(f"{root}/studies/1.2/series/1.2.3/instances/1.2.3.4", 1, 0.0)]
    manifest = BatchManifest(batch="b1", source=root, created_at="", files=files)
    with caplog.at_level("WARNING"):
        assert read_batch_reports(manifest) == ([], [])
    assert not [r for r in caplog.records if "could not read" in r.getMessage()]


# --- the ingested sample ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reports(search):
    return ReportSearch(search)


def test_the_sample_reports_land_in_the_table_linked_to_their_images(search_collection, reports):
    state = reports._current()
    layouts = {row["layout"] for row in state["rows"]}
    assert layouts == {"mimic", "openi", "indiana"} and len(state["rows"]) == 24
    assert all(state["image_ids"]), "every sample report links to at least one image"
    # Reports were written from the images' labels: what the text says agrees with the labels CSV.
    for row, image_ids in zip(state["rows"], state["image_ids"]):
        for image_id in image_ids:
            assert set(row["labels"]) == set(reports.images.get(image_id)["labels"]), row["study_key"]


def test_report_labels_agree_with_given_labels_in_the_batch_metadata(search_collection):
    from medvec.ingest.batches import list_batches, load_batch_records
    from medvec.reports.tables import load_batch_reports

    home = search_collection.settings.home
    all_reports = [r for b in list_batches(home) for r in load_batch_reports(home, b)]
    all_images = [r for b in list_batches(home) for r in load_batch_records(home, b)]
    agreement = label_agreement(all_reports, all_images)
    assert agreement["images"] == 36 and agreement["exact_match"] == 1.0
    assert agreement["per_finding"]["Cardiomegaly"] == {"given": 16, "read": 16, "precision": 1.0, "recall": 1.0}


def test_bm25_vector_and_hybrid_rank_reports(reports):
    bm25, _ = reports.search_reports("bilateral pleural effusions", k=3, mode="bm25")
    # Two sample studies have bilateral effusions: BM25 puts both first.
    assert all("bilateral" in (h.impression + h.findings).lower() for h in bm25[:2])
    assert "bilateral" not in (bm25[2].impression + bm25[2].findings).lower()
    assert all(h.routes == ["bm25"] for h in bm25)
    vector, info = reports.search_reports("bilateral pleural effusions", k=3, mode="vector")
    assert info["text_vector"] == "stored (common query)" and all(h.routes == ["vector"] for h in vector)
    hybrid, _ = reports.search_reports("bilateral pleural effusions", k=5, mode="hybrid")
    # Each hybrid score is the reciprocal-rank fusion of the two separate rankings.
    bm25_all, _ = reports.search_reports("bilateral pleural effusions", k=50, mode="bm25")
    vector_all, _ = reports.search_reports("bilateral pleural effusions", k=50, mode="vector")
    rank = {name: {h.report_id: r for r, h in enumerate(hits, start=1)}
            for name, hits in (("bm25", bm25_all), ("vector", vector_all))}
    for hit in hybrid:
        expected = sum(1 / (60 + rank[name][hit.report_id]) for name in rank if hit.report_id in rank[name])
        assert hit.score == pytest.approx(expected)
        assert hit.routes == [name for name in ("bm25", "vector") if hit.report_id in rank[name]]
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    assert any(bm25[0].snippet[s:e].lower().startswith("bilateral") for s, e in bm25[0].highlights)


def test_text_finds_images_directly_and_through_reports(reports):
    result = reports.search("small left pleural effusion", k=8, filters=Filters.of(view=["PA"]))
    assert result["studies"] and result["images"]
    assert all(i["view_position"] == "PA" for i in result["images"])
    through_reports = [i for i in result["images"] if "report" in i["routes"]]
    assert through_reports and all(i["report"]["snippet"] for i in through_reports)
    study_images = {img["image_id"] for s in result["studies"] for img in s["images"]}
    assert {i["image_id"] for i in through_reports} <= study_images


def test_similar_images_come_with_their_studies_reports(reports):
    first = reports.images.search_text("edema", k=1).hits[0].image_id
    result = reports.similar_with_reports(first, k=5)
    assert len(result["hits"]) == 5 and all(h["image_id"] != first for h in result["hits"])
    for hit in result["hits"]:
        for report in hit["reports"]:
            assert hit["image_id"] in reports._current()["image_ids"][reports._current()["row_of"][report["report_id"]]]
    assert sum(bool(h["reports"]) for h in result["hits"]) >= 4  # the WG04 images have no report


def test_report_text_carries_no_sentinel_identifiers(search_collection):
    home = search_collection.settings.home
    db = database.connect(search_collection.settings.lancedb_uri)
    table_text = json.dumps(db.open_table("reports__tiny_siglip").to_arrow().drop(["vector"]).to_pylist())
    parquet_text = "".join(json.dumps(pq.read_table(p).to_pylist()) for p in home.glob("batches/*/reports.parquet"))
    for sentinel in ("Sentinelle", "Quentin", "03/14/2021", "10:45"):
        assert sentinel not in table_text and sentinel not in parquet_text
    assert "[name]" in table_text and "___-year-old" in table_text


MEDVEC = str(Path(sys.executable).with_name("medvec"))


def test_medvec_search_reports_json_gives_studies_with_snippets_and_images(search_collection):
    env = {**os.environ, **search_collection.env}
    out = subprocess.run([MEDVEC, "search", "small left effusion", "--reports", "--json", "--k", "3"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["query"]["mode"] == "hybrid" and len(result["studies"]) == 3
    top = result["studies"][0]
    assert {"report_id", "study_key", "snippet", "highlights", "impression", "labels", "images", "routes"} <= set(top)
    assert "effusion" in top["snippet"].lower() and top["images"] and top["images"][0]["thumb_uri"]
    assert result["images"] and all("routes" in i for i in result["images"])
    human = subprocess.run([MEDVEC, "search", "small left effusion", "--reports", "--k", "2"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert human.returncode == 0 and "«effusion»" in human.stdout
    refused = subprocess.run([MEDVEC, "search", "--image", "x.dcm", "--reports"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "give TEXT" in refused.stderr


def test_a_report_only_dataset_is_evaluated_on_labels_read_from_reports(tmp_path, settings, dagster_instance):
    from medvec.evaluation.retrieval import evaluate_models
    from medvec.sample.writer import write_sample_data
    from medvec.evaluation.targets import eval_targets
    from pipelines.ingest import ingest

    sample = write_sample_data(tmp_path / "sample", count=12)
    sample.labels_csv.unlink()  # reports only: no label CSV
    summary = ingest(str(sample.out_dir), settings, instance=dagster_instance)
    assert summary.reports == 8 and summary.report_files > 0 and summary.skipped == 0
    report = evaluate_models(database.connect(settings.lancedb_uri), eval_targets(settings), split="all")
    [section] = report["models"]
    assert section["label_sources"] == {"given": 0, "reports": 12, "none": 2}  # the WG04 pair has no report
    assert set(section["text_to_image"]["per_finding"]) == {"No Finding", "Cardiomegaly", "Pleural Effusion"}
    assert "report_label_agreement" not in section  # nothing given to agree with
