"""Sentinel-filled DICOMs through the real pipeline (a real Dagster run), then every output searched for
their original names, ids, UIDs, dates, times and private tags: every file under the home (LanceDB tables
read back as text and as bytes, WebP, JSON, parquet), the Dagster event log and materialisation metadata,
Python logs, stdout and stderr, the CLI's answers, the HTTP API's answers and errors, the MCP tools'
answers and the browser bundle. A second home sharing the key gives the same replaced ids."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import anyio
import dagster as dg
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from medvec.ingest.batches import list_batches, load_batch_records
from medvec.phi import Pseudonymizer
from medvec.settings import Settings
from medvec.tables import database
from pipelines.ingest import ingest
from tests.conftest import dicom_testfile
from tests.test_bundle import ort_web  # noqa: F401 - a fixture: the bundle needs onnxruntime-web
from tests.test_http_api import running
from tests.test_phi import ORIGINALS, SENTINELS, leaks, write_sentinel_dicom

SECRET = "ZZPSEUDONYMKEYSENTINELQQ"
UNKNOWN_ID = "2.25.1"


def _sentinel_folder(folder: Path) -> Path:
    """Two good sentinel DICOMs, a truncated one, one with burned-in text, a plain one and a CSV naming them."""
    folder.mkdir()
    write_sentinel_dicom("CT_small.dcm", folder / "ct.dcm", n=1)
    write_sentinel_dicom("MR_small_RLE.dcm", folder / "mr.dcm", n=2)
    write_sentinel_dicom("CT_small.dcm", folder / "cut.dcm", truncate=True, n=3)  # its error must not leak
    write_sentinel_dicom("CT_small.dcm", folder / "burned.dcm", n=4, BurnedInAnnotation="YES")
    shutil.copy(dicom_testfile("JPEGLSNearLossless_16.dcm"), folder / "plain.dcm")
    (folder / "labels.csv").write_text("path,labels,patient_id,Patient Name\n"
                                       f"ct.dcm,Edema,{SENTINELS['PatientID']},{SENTINELS['PatientName']}\n")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _tables_as_text(settings: Settings) -> dict[str, str]:
    """Every LanceDB table read back row by row: a compressed column would hide a value from the raw bytes."""
    db = database.connect(settings.lancedb_uri)
    out = {}
    for name in database.table_names(db):
        rows = db.open_table(name).to_arrow()
        rows = rows.drop_columns([c for c in rows.column_names if c == "vector"])
        out[f"table {name}"] = json.dumps(rows.to_pylist(), default=str)
    return out


def _dagster_answers(instance: dg.DagsterInstance) -> dict[str, str]:
    """The event log of every run (log messages, step events), every materialisation's metadata, the runs."""
    from dagster._serdes import serialize_value  # run snapshots are stored compressed: read them back

    out = {}
    for run in instance.get_runs():
        out[f"run {run.run_id}"] = serialize_value(run) + serialize_value(instance.get_job_snapshot(run.job_snapshot_id))
        out[f"events {run.run_id}"] = "\n".join(
            repr(event) + (event.user_message or "") for event in instance.all_logs(run.run_id))
    for key in instance.get_asset_keys():
        for record in instance.fetch_materializations(key, limit=100).records:
            out[f"metadata {key.to_user_string()} {record.storage_id}"] = repr(record.asset_materialization.metadata)
    return out


def _api_answers(settings: Settings, folder: Path, image_ids: list[str]) -> dict[str, bytes]:
    """What `medvec serve` answers: search, image detail and files, similar, stats, health and its errors."""
    from medvec.search.configured import open_search
    from medvec.serve.http_api import create_app

    search = open_search(settings)
    routes = ["/api/stats", "/api/health", "/api/eval", "/api/search?q=chest&k=10", f"/api/images/{UNKNOWN_ID}",
              f"/api/similar/{UNKNOWN_ID}", "/api/search?q=&k=0"]
    for image_id in image_ids:
        routes += [f"/api/images/{image_id}", f"/api/images/{image_id}/reports", f"/api/similar/{image_id}",
                   f"/api/images/{image_id}/image", f"/api/images/{image_id}/thumbnail"]
    answers = {}
    try:
        with running(create_app(search, settings.home)) as base_url, httpx.Client(base_url=base_url) as api:
            for route in routes:
                answers[route] = api.get(route)
            for name in ("ct.dcm", "cut.dcm", "burned.dcm"):  # a query upload, a broken one: their answers too
                answers[f"upload {name}"] = api.post("/api/search/image",
                                                     files={"file": (name, (folder / name).read_bytes())})
    finally:
        search.close()
    assert not [r for r, answer in answers.items() if answer.status_code >= 500]
    assert answers["upload cut.dcm"].status_code == 400 and answers[f"/api/images/{UNKNOWN_ID}"].status_code == 404
    assert all(answers[f"/api/images/{i}"].status_code == 200 for i in image_ids)
    return {f"API {route}": answer.content + repr(answer.headers).encode() for route, answer in answers.items()}


async def _mcp_session(env: dict, errlog, image_ids: list[str]) -> list:
    params = StdioServerParameters(command=sys.executable, args=["-m", "medvec.cli", "mcp"], env=env)
    answers = []
    with anyio.fail_after(180):  # ends a hang; the answers themselves are what the test checks
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            answers.append(await session.call_tool("search_medical_images", {"query": "chest", "k": 10,
                                                                            "thumbnails": 2}))
            answers.append(await session.call_tool("search_studies", {"query": "chest"}))
            answers.append(await session.call_tool("search_reports", {"query": "chest"}))
            for image_id in [*image_ids, UNKNOWN_ID]:
                for tool in ("get_image_metadata", "find_similar_images", "get_image_reports"):
                    answers.append(await session.call_tool(tool, {"image_id": image_id}))
    return answers


def _mcp_answers(tmp_path: Path, image_ids: list[str]) -> dict[str, str]:
    errlog_path = tmp_path / "mcp-stderr.txt"
    with open(errlog_path, "w") as errlog:
        answers = anyio.run(_mcp_session, dict(os.environ), errlog, image_ids)
    metadata = [a for a in answers[3:] if not a.is_error]
    assert len(metadata) >= len(image_ids)  # the images were found: their answers are in the haystack
    return {"MCP answers": json.dumps([a.model_dump(mode="json", by_alias=True) for a in answers]),
            "MCP stderr": errlog_path.read_text()}


def _cli_answers(tmp_path: Path, capfd) -> dict[str, str | bytes]:
    """`medvec stats`, `medvec search` and `medvec bundle` as a user runs them, and the bundle's files."""
    from medvec.cli import main

    capfd.readouterr()
    for args in (["stats"], ["stats", "--json"], ["search", "chest"], ["search", "chest", "--json"],
                 ["bundle", str(tmp_path / "site")]):
        assert main(args) == 0, args
    printed = capfd.readouterr()
    bundle = _files(tmp_path / "site")
    assert any(name.endswith(".webp") for name in bundle) and any(name.endswith(".json") for name in bundle)
    return {"CLI stdout": printed.out, "CLI stderr": printed.err, **{f"bundle {k}": v for k, v in bundle.items()}}


@pytest.mark.slow
def test_no_original_value_reaches_any_output(tmp_path, monkeypatch, caplog, capfd, ort_web):  # noqa: F811
    for name, value in {"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_PSEUDONYM_KEY": SECRET,
                        "MEDVEC_MODEL": "tiny-siglip"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    folder = _sentinel_folder(tmp_path / "incoming")
    with caplog.at_level(logging.DEBUG), dg.instance_for_test() as instance:
        summary = ingest(str(folder), settings, instance=instance, workers=1)
        dagster = {**_files(Path(instance.root_directory)), **_dagster_answers(instance)}
    assert summary.ok == 3 and len(summary.errors) == 2 and not summary.failed_runs
    errors = {e["source_uri"].rsplit("/", 1)[-1]: e for e in database.list_errors(database.connect(settings.lancedb_uri))}
    assert errors["burned.dcm"]["stage"] == "deidentify" and "BurnedInAnnotation is YES" in errors["burned.dcm"]["message"]
    ingest_output = capfd.readouterr()

    records = [r for b in list_batches(settings.home) for r in load_batch_records(settings.home, b)]
    image_ids = [r.image_id for r in records]
    haystacks = {**_files(settings.home), **_tables_as_text(settings), **dagster, "ingest stdout": ingest_output.out,
                 "ingest stderr": ingest_output.err, "summary": json.dumps(summary.to_json(), default=str)}
    haystacks.update(_api_answers(settings, folder, image_ids))
    haystacks.update(_mcp_answers(tmp_path, image_ids))
    haystacks.update(_cli_answers(tmp_path, capfd))
    haystacks["logs"] = caplog.text
    assert any(k.endswith(".webp") for k in haystacks) and any("lancedb" in k for k in haystacks)
    assert any(k.startswith("events") for k in haystacks) and any(k.startswith("bundle") for k in haystacks)
    # The search itself works: in a source file it finds every original (file 1's UIDs, every name, date, tag).
    seen = {found.split(" leaked")[0] for found in leaks({"source": (folder / "ct.dcm").read_bytes()})}
    assert seen == {keyword for keyword in ORIGINALS if not keyword.endswith((" 2", " 3", " 4", " 5"))}
    assert leaks(haystacks) == []
    assert not [where for where, data in haystacks.items()
                if SECRET.encode() in (data if isinstance(data, bytes) else data.encode())], "the key leaked"

    # The PatientID did leave, but only as its keyed pseudonym; the UIDs only as keyed 2.25. UIDs.
    expected = Pseudonymizer(SECRET).subject_key(SENTINELS["PatientID"])
    assert {r.subject_key for r in records if not r.source_uri.endswith("plain.dcm")} == {expected}
    assert all(r.image_id.startswith("2.25.") and (r.study_id or "2.25.").startswith("2.25.") for r in records)


def _replaced_ids(folder: Path, home: Path) -> list[tuple]:
    settings = Settings.from_env({**os.environ, "MEDVEC_HOME": str(home)})
    with dg.instance_for_test() as instance:  # another machine: another home, another Dagster instance
        summary = ingest(str(folder), settings, instance=instance, workers=1, embed=False)
    return sorted((r.image_id, r.study_id, r.series_id, r.subject_key)
                  for b in summary.batches for r in load_batch_records(home, b))


def test_two_homes_sharing_the_key_give_the_same_replaced_ids(tmp_path, monkeypatch):
    folder = _sentinel_folder(tmp_path / "incoming")
    monkeypatch.setenv("MEDVEC_PSEUDONYM_KEY", SECRET)
    one, two = _replaced_ids(folder, tmp_path / "one"), _replaced_ids(folder, tmp_path / "two")
    assert len(one) == 3 and one == two
    monkeypatch.setenv("MEDVEC_PSEUDONYM_KEY", "another-key")
    other = _replaced_ids(folder, tmp_path / "three")
    assert {ids[:3] for ids in other}.isdisjoint({ids[:3] for ids in one})  # another key: other ids
