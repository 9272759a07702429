"""`medvec serve` over real HTTP: search routes, uploads, image bytes, reports, the evaluation report, errors, the
token, the bind address."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image

from medvec.tables import database
from medvec.serve.http_api import NO_EVAL, create_app
from medvec.search.reports import ReportSearch
from medvec.search.images import Filters
from medvec.search.configured import open_search
from medvec.settings import Settings
from tests.conftest import collection_image_id, free_port

REPORTS_TABLE = "reports__tiny_siglip"
UPLOAD_LIMIT = 4 * 2**20  # above the largest sample DICOM (1.8 MB), small enough to exceed cheaply
TOKEN = "s3cret-token-for-tests"


@contextlib.contextmanager
def running(app):
    """Serve `app` with uvicorn in a background thread on a free loopback port; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def api(search_collection):
    settings = search_collection.settings
    search = open_search(settings)
    with running(create_app(search, settings.home, max_upload_bytes=UPLOAD_LIMIT)) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            yield client
    search.close()


@pytest.fixture(scope="module")
def served_cli(search_collection):
    """`medvec serve` as a user runs it, with MEDVEC_API_TOKEN set and no --host."""
    port = free_port()
    env = {**os.environ, **search_collection.env, "MEDVEC_API_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "medvec.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = _read_until(process, f"http://127.0.0.1:{port}/", timeout_s=90)
    try:
        yield type("Served", (), {"port": port, "url": f"http://127.0.0.1:{port}", "lines": lines})
    finally:
        process.terminate()
        process.wait(20)


def _read_until(process: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not any(needle in line for line in lines):
        assert process.poll() is None, f"medvec serve exited: {''.join(lines)}"
        assert time.monotonic() < deadline, f"medvec serve printed no URL: {''.join(lines)}"
        time.sleep(0.05)
    url = next(line for line in lines if needle in line).split("open ", 1)[1].split()[0]
    while True:  # the URL is printed just before uvicorn binds
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{url}api/health", timeout=2)
            return lines
        assert time.monotonic() < deadline, "medvec serve never answered"
        time.sleep(0.1)


def evaluated_home(search_collection, folder: Path) -> Settings:
    """A copy of the shared collection (read-only) with `medvec eval --split all` run over it, as a user runs it."""
    home = folder / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    env = {**search_collection.env, "MEDVEC_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "medvec.cli", "eval", "--split", "all"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (home / "eval" / "report.json").is_file() and (home / "eval" / "recall_at_k.png").is_file()
    return Settings.from_env(env)


def home_without_reports(search_collection, folder: Path) -> Settings:
    """A copy of the shared collection whose model has no reports table, as a home ingested before reports."""
    home = folder / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    settings = Settings.from_env({**search_collection.env, "MEDVEC_HOME": str(home)})
    database.connect(settings.lancedb_uri).drop_table(REPORTS_TABLE)
    return settings


@pytest.fixture(scope="module")
def reports_in_process(search_collection):
    """The same ReportSearch the server holds, in this process, to compare answers with."""
    search = open_search(search_collection.settings)
    yield ReportSearch(search)
    search.close()


@pytest.fixture(scope="module")
def evaluated(search_collection, tmp_path_factory) -> Settings:
    return evaluated_home(search_collection, tmp_path_factory.mktemp("evaluated"))


@pytest.fixture(scope="module")
def eval_api(evaluated):
    search = open_search(evaluated)
    with running(create_app(search, evaluated.home)) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            yield client
    search.close()


def _synthetic_dicom(search_collection, name="chest_003.dcm") -> Path:
    """A sample DICOM by name, flat under synthetic/ or in the MIMIC-style study folders beneath it."""
    return next((Path(search_collection.sample_dir) / "synthetic").rglob(name))


def _first_hit(api, **params) -> dict:
    return api.get("/api/search", params={"q": "pleural effusion", "k": 1, **params}).json()["hits"][0]


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


# --- health and text search ------------------------------------------------------------------------

def test_health_reports_the_model_table_and_rows(api, search_collection):
    body = api.get("/api/health").json()
    assert body["ok"] is True and body["reason"] is None
    assert (body["model"], body["table"]) == ("tiny-siglip", "images__tiny_siglip")
    assert body["rows"] == search_collection.summary.embedded
    assert isinstance(body["table_version"], int) and body["auth_required"] is False
    reports = database.connect(search_collection.settings.lancedb_uri).open_table(REPORTS_TABLE).count_rows()
    assert body["reports"] == reports > 0


def test_health_says_why_when_nothing_is_embedded_and_search_answers_503(tmp_path):
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "empty_home"), "MEDVEC_MODEL": "tiny-siglip"})
    with running(create_app(open_search(settings), settings.home)) as base_url:
        health = httpx.get(f"{base_url}/api/health")
        search = httpx.get(f"{base_url}/api/search", params={"q": "edema"})
    assert health.status_code == 200
    assert health.json()["ok"] is False and "nothing has been embedded" in health.json()["reason"]
    assert search.status_code == 503 and "nothing has been embedded" in search.json()["error"]


def test_text_search_returns_k_ranked_hits_with_metadata_and_urls(api):
    response = api.get("/api/search", params={"q": "an opacity near the left heart border", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["route"].startswith("index") and body["query"]["text"] == "an opacity near the left heart border"
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert hit["image_id"] and {"view_position", "modality", "labels", "split", "study_id"} <= hit.keys()
        assert hit["thumbnail_url"] == f"/api/images/{hit['image_id']}/thumbnail"
        assert hit["image_url"] == f"/api/images/{hit['image_id']}/image"
        assert "source_uri" not in hit


def test_fallback_query_is_answered_without_the_encoder_route(api):
    assert api.get("/api/search", params={"q": "Pleural effusion.", "k": 3}).json()["route"] == "fallback"


def test_view_filter_keeps_only_that_view(api):
    by_view = api.get("/api/stats").json()["by_view"]
    hits = api.get("/api/search", params={"q": "cardiomegaly", "k": 100, "view": "PA"}).json()["hits"]
    assert len(hits) == by_view["PA"]
    assert {h["view_position"] for h in hits} == {"PA"}
    two = api.get("/api/search", params=[("q", "cardiomegaly"), ("k", 100), ("view", "pa"), ("view", "AP")])
    assert len(two.json()["hits"]) == by_view["PA"] + by_view["AP"]
    assert {h["view_position"] for h in two.json()["hits"]} == {"PA", "AP"}


def test_label_and_split_filters_combine(api):
    params = {"q": "heart", "k": 100, "label": "Cardiomegaly", "split": "train"}
    hits = api.get("/api/search", params=params).json()["hits"]
    assert hits and all("Cardiomegaly" in h["labels"] and h["split"] == "train" for h in hits)


@pytest.mark.parametrize(("params", "says"), [
    ({"q": "edema", "k": 0}, "k"), ({"q": "edema", "k": "ten"}, "k"), ({"q": "edema", "k": 501}, "k"),
    ({"k": 3}, "q"), ({"q": "   "}, "empty"), ({"q": "x" * 1001}, "1,000"),
])
def test_bad_search_parameters_are_400_with_a_reason(api, params, says):
    response = api.get("/api/search", params=params)
    assert response.status_code == 400
    assert says in response.json()["error"]


# --- image search ----------------------------------------------------------------------------------

def test_uploaded_dicom_finds_itself_first(api, search_collection):
    path = _synthetic_dicom(search_collection)
    response = api.post("/api/search/image", params={"k": 3}, files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    top = response.json()["hits"][0]
    assert top["image_id"] == collection_image_id(path)
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    assert response.json()["query"]["format"] == "dicom"


def test_uploaded_png_finds_the_image_it_was_made_from(api):
    hit = _first_hit(api, view="LATERAL")
    buffer = io.BytesIO()
    Image.open(io.BytesIO(api.get(hit["image_url"]).content)).save(buffer, format="PNG")
    response = api.post("/api/search/image", params={"k": 3, "view": "LATERAL"},
                        files={"file": ("query.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    top = response.json()["hits"][0]
    assert top["image_id"] == hit["image_id"] and top["score"] > 0.98
    assert all(h["view_position"] == "LATERAL" for h in response.json()["hits"])


def test_text_file_upload_is_400_with_a_plain_reason(api, search_collection):
    notes = Path(search_collection.sample_dir) / "broken" / "notes.txt"
    response = api.post("/api/search/image", files={"file": ("notes.txt", notes.read_bytes(), "text/plain")})
    assert response.status_code == 400
    assert "could not be read as an image" in response.json()["error"]


def test_upload_without_a_file_field_is_400(api):
    response = api.post("/api/search/image", data={"other": "x"}, files={"not_file": ("a.png", b"123")})
    assert response.status_code == 400 and "file" in response.json()["error"]


@pytest.mark.parametrize("size", [UPLOAD_LIMIT + 1, 2 * UPLOAD_LIMIT], ids=["just-over", "twice"])
def test_oversize_upload_is_413(api, size):
    response = api.post("/api/search/image", files={"file": ("big.dcm", b"\0" * size)})
    assert response.status_code == 413
    assert "4 MiB" in response.json()["error"]


def test_upload_at_the_limit_is_read_not_refused_for_size(api):
    response = api.post("/api/search/image", files={"file": ("big.dcm", b"\0" * UPLOAD_LIMIT)})
    assert response.status_code == 400 and "could not be read" in response.json()["error"]


# --- similar and stored images ---------------------------------------------------------------------

def test_similar_excludes_the_image_itself(api):
    image_id = _first_hit(api)["image_id"]
    hits = api.get(f"/api/similar/{image_id}", params={"k": 10}).json()["hits"]
    assert len(hits) == 10 and image_id not in {h["image_id"] for h in hits}
    lateral = api.get(f"/api/similar/{image_id}", params={"k": 5, "view": "LATERAL"}).json()["hits"]
    assert lateral and {h["view_position"] for h in lateral} == {"LATERAL"}
    assert image_id not in {h["image_id"] for h in lateral}


def test_metadata_matches_the_hit(api):
    hit = _first_hit(api)
    body = api.get(f"/api/images/{hit['image_id']}").json()
    assert body["image_id"] == hit["image_id"]
    assert (body["view_position"], body["labels"], body["split"]) == (hit["view_position"], hit["labels"], hit["split"])
    assert body["thumbnail_url"] == hit["thumbnail_url"] and "source_uri" not in body


@pytest.mark.parametrize("route", ["/api/images/{}", "/api/images/{}/image", "/api/images/{}/thumbnail",
                                   "/api/similar/{}", "/api/similar/{}?reports=true", "/api/images/{}/reports"])
def test_unknown_image_id_is_404_json(api, route):
    response = api.get(route.format("1.2.3.no.such.image"))
    assert response.status_code == 404
    assert "no image '1.2.3.no.such.image'" in response.json()["error"]


def test_image_and_thumbnail_are_webp_and_the_thumbnail_is_smaller(api):
    hit = _first_hit(api)
    image, thumb = api.get(hit["image_url"]), api.get(hit["thumbnail_url"])
    for response in (image, thumb):
        assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
        assert _is_webp(response.content)
    full, small = Image.open(io.BytesIO(image.content)), Image.open(io.BytesIO(thumb.content))
    assert full.size == (hit["width"], hit["height"]) and max(small.size) < max(full.size)


@pytest.mark.parametrize("target", [
    "/api/images/../../../../etc/passwd",
    "/api/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
    "/api/images/..%252F..%252Fetc%252Fpasswd/image",
    "/api/images/..%5C..%5Cetc%5Cpasswd/image",
    "/api/images/%2e%2e/image",
    "/static/../http_api.py",
    "/static/..%2Fhttp_api.py",
    "/static/%2e%2e/http_api.py",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
])
def test_path_traversal_is_404(api, target):
    """Sent byte for byte (httpx would normalise the dots away before they reach the server)."""
    host, port = api.base_url.host, api.base_url.port
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", target)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 404
    assert b"root:" not in body and b"def create_app" not in body and b"[project]" not in body


def test_a_stored_file_that_links_outside_home_is_not_served(search_collection, tmp_path):
    """The uri comes from the table, but the resolved file must still be under the home."""
    home = tmp_path / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    settings = Settings.from_env({**search_collection.env, "MEDVEC_HOME": str(home)})
    search = open_search(settings)
    hit = search.search_text("pleural effusion", k=1).hits[0]
    secret = tmp_path / "outside.webp"
    secret.write_bytes((home / hit.metadata["image_uri"]).read_bytes())
    (home / hit.metadata["thumb_uri"]).unlink()
    (home / hit.metadata["thumb_uri"]).symlink_to(secret)
    with running(create_app(search, home)) as base_url:
        linked = httpx.get(f"{base_url}/api/images/{hit.image_id}/thumbnail")
        inside = httpx.get(f"{base_url}/api/images/{hit.image_id}/image")
    assert linked.status_code == 404 and "no stored file" in linked.json()["error"]
    assert inside.status_code == 200 and _is_webp(inside.content)


def test_stats_counts_the_collection_and_hides_the_database_path(api, search_collection):
    stats = api.get("/api/stats").json()
    assert stats["images"] == search_collection.summary.embedded
    assert sum(stats["by_view"].values()) == stats["images"]
    assert {"Cardiomegaly", "Pleural Effusion"} <= stats["by_label"].keys()
    assert [m["table"] for m in stats["models"]] == ["images__tiny_siglip"]
    assert "lancedb_uri" not in stats


# --- reports ---------------------------------------------------------------------------------------

def _without_urls(images: list[dict]) -> list[dict]:
    return [{k: v for k, v in image.items() if k not in ("image_url", "thumbnail_url")} for image in images]


def test_report_search_gives_studies_with_marked_snippets_and_images_with_routes(api, reports_in_process):
    response = api.get("/api/search", params={"q": "small left effusion", "reports": "true", "k": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["mode"] == body["mode"] == "hybrid" and body["table"] == REPORTS_TABLE
    studies, images = body["studies"], body["images"]
    assert len(studies) == 6 and len(images) == 6
    assert "effusion" in studies[0]["snippet"].lower()
    assert studies[0]["highlights"]
    for study in studies:
        # A study whose only mention is negated ("No pleural effusion.") has nothing marked.
        assert study["snippet"] and set(study["routes"]) <= {"bm25", "vector"}
        marked = [study["snippet"][start:end].lower() for start, end in study["highlights"]]
        assert all(word.startswith(("small", "left", "effusion")) for word in marked), marked
        for start, _ in study["highlights"]:
            assert not study["snippet"][:start].lower().rstrip().endswith(("no", "no pleural")), study["snippet"]
        assert study["images"], study["study_key"]
        for image in study["images"]:
            assert image["thumbnail_url"] == f"/api/images/{image['image_id']}/thumbnail"
            assert image["image_url"] == f"/api/images/{image['image_id']}/image"
    assert _is_webp(api.get(studies[0]["images"][0]["thumbnail_url"]).content)
    assert [i["rank"] for i in images] == list(range(1, 7))
    assert [i["score"] for i in images] == sorted((i["score"] for i in images), reverse=True)
    report_ids = {s["report_id"] for s in studies}
    for image in images:
        assert image["routes"] in (["image"], ["report"], ["image", "report"])
        assert image["thumbnail_url"] == f"/api/images/{image['image_id']}/thumbnail" and "source_uri" not in image
        if "report" in image["routes"]:  # found through a report of this answer, which comes with its snippet
            assert image["report"]["report_id"] in report_ids and image["report"]["snippet"]
    assert any("report" in i["routes"] for i in images)

    # The same answer as ReportSearch gives in-process, plus the URLs.
    expected = reports_in_process.search("small left effusion", 6)
    assert [(s["report_id"], s["score"], s["highlights"]) for s in studies] == [
        (s["report_id"], s["score"], s["highlights"]) for s in expected["studies"]]
    assert [_without_urls(s["images"]) for s in studies] == [s["images"] for s in expected["studies"]]
    assert _without_urls(images) == json.loads(json.dumps(expected["images"]))


@pytest.mark.parametrize("mode", ["bm25", "vector"])
def test_report_search_mode_picks_the_ranking(api, reports_in_process, mode):
    body = api.get("/api/search", params={"q": "bilateral pleural effusions", "reports": "true", "mode": mode,
                                          "k": 4}).json()
    assert body["mode"] == mode and all(s["routes"] == [mode] for s in body["studies"])
    hits, _ = reports_in_process.search_reports("bilateral pleural effusions", 4, mode)
    assert [s["report_id"] for s in body["studies"]] == [h.report_id for h in hits]


def test_report_search_filters_narrow_the_images(api, reports_in_process):
    params = {"q": "small left pleural effusion", "reports": "true", "k": 8, "view": "PA"}
    body = api.get("/api/search", params=params).json()
    assert body["images"] and {i["view_position"] for i in body["images"]} == {"PA"}
    assert body["query"]["filters"] == {"view": ["PA"]}
    expected = reports_in_process.search("small left pleural effusion", 8, Filters.of(view=["PA"]))
    assert [i["image_id"] for i in body["images"]] == [i["image_id"] for i in expected["images"]]


@pytest.mark.parametrize(("params", "says"), [
    ({"q": "edema", "mode": "bm25"}, "reports=true"),
    ({"q": "edema", "reports": "true", "mode": "fuzzy"}, "mode"),
    ({"q": "  ", "reports": "true"}, "empty"),
    ({"q": "edema", "reports": "perhaps"}, "reports"),
])
def test_bad_report_search_parameters_are_400(api, params, says):
    response = api.get("/api/search", params=params)
    assert response.status_code == 400 and says in response.json()["error"]


def test_similar_with_reports_gives_each_hit_its_studys_reports(api, reports_in_process):
    first = api.get("/api/search", params={"q": "small left effusion", "reports": "true", "k": 1}).json()
    image_id = first["studies"][0]["images"][0]["image_id"]
    body = api.get(f"/api/similar/{image_id}", params={"k": 6, "reports": "true"}).json()
    hits = body["hits"]
    assert len(hits) == 6 and image_id not in {h["image_id"] for h in hits}
    assert [h["image_id"] for h in hits] == [h["image_id"] for h in api.get(f"/api/similar/{image_id}",
                                                                            params={"k": 6}).json()["hits"]]
    for hit in hits:
        assert hit["thumbnail_url"] == f"/api/images/{hit['image_id']}/thumbnail"
        linked = api.get(f"/api/images/{hit['image_id']}/reports").json()["reports"]
        assert [r["report_id"] for r in hit["reports"]] == [r["report_id"] for r in linked]
        assert [r["impression"] for r in hit["reports"]] == [r["impression"] for r in linked]
    assert sum(bool(h["reports"]) for h in hits) >= 4
    expected = reports_in_process.similar_with_reports(image_id, 6)
    assert [h["reports"] for h in hits] == [h["reports"] for h in expected["hits"]]
    assert "reports" not in api.get(f"/api/similar/{image_id}", params={"k": 2}).json()["hits"][0]


def test_an_images_reports_have_its_sections(api, reports_in_process):
    study = api.get("/api/search", params={"q": "small left effusion", "reports": "true", "k": 1}).json()["studies"][0]
    for image in study["images"]:
        body = api.get(f"/api/images/{image['image_id']}/reports").json()
        assert body["image_id"] == image["image_id"]
        report = next(r for r in body["reports"] if r["report_id"] == study["report_id"])
        assert report["impression"] == study["impression"] and report["findings"] == study["findings"]
        assert report["indication"] and report["layout"] == study["layout"] and report["labels"] == study["labels"]
    unreported = next(i for i in reports_in_process.images.search_text("edema", k=100).hits
                      if not reports_in_process.reports_for_image(i.image_id))  # the sample's WG04 images
    body = api.get(f"/api/images/{unreported.image_id}/reports").json()
    assert body == {"image_id": unreported.image_id, "reports": []}


def test_without_a_reports_table_report_routes_are_503_and_image_search_still_answers(search_collection, tmp_path):
    settings = home_without_reports(search_collection, tmp_path)
    search = open_search(settings)
    image_id = search.search_text("edema", k=1).hits[0].image_id
    with running(create_app(search, settings.home)) as base_url:
        health = httpx.get(f"{base_url}/api/health").json()
        refused = [httpx.get(base_url + route, timeout=60) for route in (
            "/api/search?q=small+left+effusion&reports=true", f"/api/similar/{image_id}?reports=true",
            f"/api/images/{image_id}/reports")]
        plain = httpx.get(f"{base_url}/api/search", params={"q": "small left effusion"}, timeout=60)
    search.close()
    assert health["ok"] is True and health["reports"] is None
    for response in refused:
        assert response.status_code == 503
        error = response.json()["error"]
        assert error.startswith("no reports for tiny-siglip yet") and "medvec ingest" in error
    assert plain.status_code == 200 and plain.json()["hits"]


# --- the evaluation report --------------------------------------------------------------------------

def test_eval_report_is_served_as_medvec_eval_wrote_it(eval_api, evaluated):
    response = eval_api.get("/api/eval")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    written = json.loads((evaluated.home / "eval" / "report.json").read_text())
    assert response.json() == written
    assert written["schema"] == "medvec.eval/1" and written["split"] is None  # --split all
    section = written["models"][0]
    assert (section["model"], section["table"]) == ("tiny-siglip", "images__tiny_siglip")
    assert section["text_to_image"]["macro"]["findings"] >= 1 and section["image_to_image"]["queries"] > 0
    assert "no-cache" in response.headers["cache-control"]  # a new run must show without a stale copy


def test_eval_plot_is_the_recall_at_k_png(eval_api, evaluated):
    response = eval_api.get("/api/eval/plot.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (evaluated.home / "eval" / "recall_at_k.png").read_bytes()
    assert Image.open(io.BytesIO(response.content)).size == (640, 400)


def test_eval_routes_are_404_until_a_report_exists_then_serve_it_without_a_restart(tmp_path, evaluated):
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_MODEL": "tiny-siglip"})
    routes = ("/api/eval", "/api/eval/plot.png")
    with running(create_app(open_search(settings), settings.home)) as base_url:
        before = [httpx.get(base_url + route) for route in routes]
        shutil.copytree(evaluated.home / "eval", settings.home / "eval")  # what a run writes
        after = [httpx.get(base_url + route) for route in routes]
    for response in before:
        assert response.status_code == 404
        assert response.json() == {"error": "no evaluation yet: run `medvec eval` or materialise retrieval_evaluation"}
    assert [r.status_code for r in after] == [200, 200]
    assert after[0].json()["models"][0]["model"] == "tiny-siglip" and after[1].content[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_eval_report_that_links_outside_home_is_not_served(tmp_path, evaluated):
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_MODEL": "tiny-siglip"})
    outside = tmp_path / "outside.json"
    outside.write_text((evaluated.home / "eval" / "report.json").read_text())
    (settings.home / "eval").mkdir(parents=True)
    (settings.home / "eval" / "report.json").symlink_to(outside)
    with running(create_app(open_search(settings), settings.home)) as base_url:
        response = httpx.get(f"{base_url}/api/eval")
    assert response.status_code == 404 and response.json()["error"] == NO_EVAL


def test_eval_routes_need_the_token_when_one_is_set(evaluated):
    search = open_search(evaluated)
    with running(create_app(search, evaluated.home, token=TOKEN)) as base_url:
        for route in ("/api/eval", "/api/eval/plot.png"):
            missing = httpx.get(base_url + route)
            wrong = httpx.get(base_url + route, headers={"Authorization": "Bearer nope"})
            good = httpx.get(base_url + route, headers={"Authorization": f"Bearer {TOKEN}"})
            assert missing.status_code == wrong.status_code == 401
            assert "token" in missing.json()["error"] and "tiny-siglip" not in missing.text
            assert good.status_code == 200 and len(good.content) > 1000
    search.close()


# --- the page, the schema, the token and the bind address --------------------------------------------

def test_page_and_its_script_are_served_with_a_same_origin_policy(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="q"' in page.text and "/static/app.js" in page.text
    script = api.get("/static/app.js")
    assert script.status_code == 200 and "/api/search" in script.text


def test_openapi_documents_every_route(api):
    schema = api.get("/openapi.json").json()
    operations = {(method, path): op for path, item in schema["paths"].items() for method, op in item.items()}
    assert set(operations) == {
        ("get", "/api/health"), ("get", "/api/search"), ("post", "/api/search/image"),
        ("get", "/api/similar/{image_id}"), ("get", "/api/images/{image_id}"),
        ("get", "/api/images/{image_id}/image"), ("get", "/api/images/{image_id}/thumbnail"), ("get", "/api/stats"),
        ("get", "/api/eval"), ("get", "/api/eval/plot.png"), ("get", "/api/images/{image_id}/reports"),
        ("get", "/api/eval/zero_shot.png"), ("post", "/api/search/refine")}
    assert all(op.get("summary") for op in operations.values())
    search_params = {p["name"] for p in operations[("get", "/api/search")]["parameters"]}
    assert search_params == {"q", "k", "view", "label", "modality", "split", "sex", "age_group", "skin_type",
                             "reports", "mode", "rerank"}
    assert {p["name"] for p in operations[("get", "/api/similar/{image_id}")]["parameters"]} >= {"image_id", "reports"}
    components = schema["components"]["schemas"]
    assert "HitOut" in components
    # Each answer is documented: with reports=true the search and find-similar answers take the report shapes.
    answers = {path: op["responses"]["200"]["content"]["application/json"]["schema"]
               for (_, path), op in operations.items() if path in ("/api/search", "/api/similar/{image_id}")}
    assert [r["$ref"].rsplit("/", 1)[1] for r in answers["/api/search"]["anyOf"]] == ["SearchOut", "ReportSearchOut"]
    assert [r["$ref"].rsplit("/", 1)[1] for r in answers["/api/similar/{image_id}"]["anyOf"]] == [
        "SearchOut", "SimilarReportsOut"]
    assert {"studies", "images", "mode"} <= components["ReportSearchOut"]["properties"].keys()
    assert {"snippet", "highlights", "images"} <= components["StudyOut"]["properties"].keys()
    assert "routes" in components["ReportImageOut"]["properties"]
    assert "reports" in components["SimilarHitOut"]["required"]
    reports_op = operations[("get", "/api/images/{image_id}/reports")]
    assert reports_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ImageReportsOut")
    assert "no reports table" in reports_op["responses"]["503"]["description"]
    report = schema["components"]["schemas"]["EvalReportOut"]
    assert {"schema", "split", "ks", "uncertain_policy", "findings", "models"} <= report["properties"].keys()
    assert "text_to_image_skipped" in schema["components"]["schemas"]["EvalModelOut"]["properties"]
    assert "no evaluation yet" in operations[("get", "/api/eval")]["responses"]["404"]["description"]
    assert "image/png" in operations[("get", "/api/eval/plot.png")]["responses"]["200"]["content"]
    assert api.get("/docs").status_code == 200


@pytest.mark.slow
def test_token_is_required_on_api_routes_but_not_on_health(served_cli, search_collection):
    base = served_cli.url
    health = httpx.get(f"{base}/api/health")
    assert health.status_code == 200 and health.json()["auth_required"] is True
    good = {"Authorization": f"Bearer {TOKEN}"}
    for route in ("/api/search?q=edema", "/api/stats", "/api/search?q=edema&reports=true"):
        missing, wrong = httpx.get(base + route), httpx.get(base + route, headers={"Authorization": "Bearer nope"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer" and "token" in missing.json()["error"]
        assert httpx.get(base + route, headers=good).status_code == 200
    hit = httpx.get(f"{base}/api/search", params={"q": "edema", "k": 1}, headers=good).json()["hits"][0]
    assert httpx.get(base + hit["thumbnail_url"]).status_code == 401
    assert _is_webp(httpx.get(base + hit["thumbnail_url"], headers=good).content)
    upload = _synthetic_dicom(search_collection)
    assert httpx.post(f"{base}/api/search/image", files={"file": (upload.name, upload.read_bytes())}).status_code == 401
    assert httpx.get(f"{base}/").status_code == 200  # the page holds no data; it asks for the token


@pytest.mark.slow
def test_serve_binds_loopback_by_default_and_says_a_token_is_needed(served_cli):
    printed = "".join(served_cli.lines)
    assert f"open http://127.0.0.1:{served_cli.port}/" in printed
    assert "bearer token is required" in printed and TOKEN not in printed
    with socket.create_connection(("127.0.0.1", served_cli.port), timeout=5):
        pass
    other = _non_loopback_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to check the bind against")
    with pytest.raises(OSError):
        socket.create_connection((other, served_cli.port), timeout=5).close()


@pytest.mark.slow
def test_serve_exits_1_when_the_port_is_taken(search_collection):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "medvec.cli", "serve", "--port", str(port)],
                                env={**os.environ, **search_collection.env}, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "address already in use" in (result.stdout + result.stderr).lower()


def _non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))  # UDP connect sends nothing; it picks the outgoing interface
        address = probe.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


# --- strangers: foreign Host (DNS rebinding), foreign Origin (cross-site POST), binding beyond loopback ---

def test_foreign_host_is_refused_and_loopback_names_are_answered(api):
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.nip.io"):
        refused = api.get("/api/stats", headers={"Host": host})
        assert refused.status_code == 400 and "MEDVEC_ALLOWED_HOSTS" in refused.json()["error"]
        assert "rows" not in refused.text
    assert api.get("/", headers={"Host": "evil.example"}).status_code == 400  # the page too
    for host in ("127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:8080"):
        assert api.get("/api/stats", headers={"Host": host}).status_code == 200, host


def test_cross_site_upload_is_refused_and_same_site_goes_through(api, search_collection):
    upload = _synthetic_dicom(search_collection)
    files = {"file": (upload.name, upload.read_bytes())}
    same = api.base_url.host + f":{api.base_url.port}"
    for origin in ("https://evil.example", "null", f"http://evil.example:{api.base_url.port}"):
        refused = api.post("/api/search/image", files=files, headers={"Origin": origin})
        assert refused.status_code == 403 and "other web sites" in refused.json()["error"], origin
    refused = api.post("/api/search/image", files=files, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert api.get("/api/stats", headers={"Origin": "https://evil.example"}).status_code == 403
    allowed = api.post("/api/search/image", params={"k": 1}, files=files, headers={"Origin": f"http://{same}"})
    assert allowed.status_code == 200 and allowed.json()["hits"]


def test_configured_host_names_are_answered(search_collection):
    settings = search_collection.settings
    search = open_search(settings)
    try:
        with running(create_app(search, settings.home, allowed_hosts=("search.example",))) as base_url:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                assert client.get("/api/stats", headers={"Host": "search.example:443"}).status_code == 200
                assert client.get("/api/stats", headers={"Origin": "https://search.example"}).status_code == 200
                assert client.get("/api/stats", headers={"Host": "evil.example"}).status_code == 400
    finally:
        search.close()


def test_serve_refuses_to_bind_beyond_loopback_without_a_token(search_collection):
    env = {**os.environ, **search_collection.env}
    env.pop("MEDVEC_API_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "medvec.cli", "serve", "--host", "0.0.0.0", "--port",
                             str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "MEDVEC_API_TOKEN" in result.stderr and "refusing" in result.stderr
