"""One Medvec home holding a chest collection (the bundled sample) and a dermatology collection (SCIN's
layout, colour photographs) side by side: each answers only with its own images, through the domain, the
CLI, the HTTP API (`?collection=`) and the MCP tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from medvec.embedders.shared import SharedEmbedders
from medvec.search.configured import open_search
from medvec.serve.collections import OpenCollections, UnknownCollection
from medvec.serve.http_api import collection_apps, create_app
from medvec.settings import Settings
from tests.conftest import CHROMIUM
from tests.test_dataset_adapters import write_scin
from tests.test_http_api import running
from tests.test_web_page import search_for

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "collections-token"


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory):
    """A home with `chest` (12 synthetic radiographs and the sample's real DICOMs) and `derm` (three SCIN
    photographs), each ingested and embedded with tiny-siglip into its own sub-home."""
    import dagster as dg

    from medvec.sample.writer import write_sample_data
    from pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("two_collections")
    env = {"MEDVEC_HOME": str(root / "home"), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_ALLOW_DEV_KEY": "1",
           "MEDVEC_MODEL": "tiny-siglip"}
    sample = write_sample_data(root / "sample", count=12)
    write_scin(root / "scin")
    ids = {}
    with dg.instance_for_test() as instance:
        for name, source in (("chest", sample.out_dir), ("derm", root / "scin")):
            settings = Settings.from_env({**env, "MEDVEC_COLLECTION": name})
            summary = ingest(str(source), settings, batch_size=16, instance=instance, workers=1)
            assert summary.embedded and not summary.failed_runs, summary.to_json()
            search = open_search(settings)
            ids[name] = set(search.info() and _all_ids(search))
            search.close()
    return type("TwoCollections", (), {"env": env, "root": root / "home", "ids": ids,
                                       "settings": Settings.from_env(env)})


def _all_ids(search) -> list[str]:
    from medvec.tables import database

    table = database.connect(search.lancedb_uri).open_table(search.table_name)
    return table.search().select(["image_id"]).limit(None).to_arrow().column("image_id").to_pylist()


def _medvec(env: dict, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDVEC_")}
    return subprocess.run([sys.executable, "-m", "medvec.cli", *args], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# --- the layout -------------------------------------------------------------------------------------

def test_each_collection_keeps_its_own_tables_and_batches_and_shares_the_model_files(two_collections):
    home = two_collections.root
    assert two_collections.ids["chest"] and two_collections.ids["derm"]
    assert not two_collections.ids["chest"] & two_collections.ids["derm"]
    for name in ("chest", "derm"):
        assert (home / "collections" / name / "lancedb").is_dir() and (home / "collections" / name / "batches").is_dir()
        assert not (home / "collections" / name / "models").exists()
    assert (home / "models").is_dir() and not (home / "lancedb").exists()


@pytest.mark.parametrize("name, query", [("chest", "pleural effusion"), ("derm", "eczema on the arm")])
def test_a_search_in_a_collection_finds_only_its_own_images(two_collections, name, query):
    search = open_search(two_collections.settings.for_collection(name))
    try:
        hits = search.search_text(query, k=50).hits
    finally:
        search.close()
    assert {hit.image_id for hit in hits} == two_collections.ids[name]


# --- the command line ---------------------------------------------------------------------------------

def test_medvec_collections_json_lists_both_with_their_images(two_collections):
    proc = _medvec(two_collections.env, "collections", "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["home"] == str(two_collections.root)
    assert [(c["name"], c["images"], c["default"]) for c in answer["collections"]] == [
        ("chest", len(two_collections.ids["chest"]), False), ("derm", len(two_collections.ids["derm"]), False)]


def test_cli_search_with_collection_answers_from_that_collection(two_collections):
    proc = _medvec(two_collections.env, "search", "a skin rash", "--k", "50", "--collection", "derm", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {hit["image_id"] for hit in json.loads(proc.stdout)["hits"]} == two_collections.ids["derm"]


def test_a_bad_collection_name_is_one_line_and_exit_2(two_collections):
    proc = _medvec(two_collections.env, "stats", "--collection", "../chest")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "medvec: --collection '../chest' is not a collection name: use 1-64 lower-case letters, digits, '_' or '-', "
        "starting with a letter or digit (e.g. chest, derm_2024)"]


# --- HTTP -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(two_collections):
    """`medvec serve --collection chest` in process: chest without ?collection=, derm with it."""
    settings = two_collections.settings.for_collection("chest")
    embedders = SharedEmbedders()  # as `medvec serve` opens them
    search = open_search(settings, embedders=embedders)
    collections = collection_apps(settings, embedders=embedders, token=TOKEN)
    app = create_app(search, settings.home, token=TOKEN, collections=collections)
    with running(app) as base_url:
        with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield client
    collections.close()
    search.close()


def test_api_collections_lists_both_and_marks_the_default(api, two_collections):
    answer = api.get("/api/collections").json()
    assert [(c["name"], c["images"], c["default"]) for c in answer["collections"]] == [
        ("chest", len(two_collections.ids["chest"]), True), ("derm", len(two_collections.ids["derm"]), False)]


def test_the_collection_parameter_switches_the_search_and_the_urls_follow(api, two_collections):
    chest = api.get("/api/search", params={"q": "eczema", "k": 50}).json()
    derm = api.get("/api/search", params={"q": "eczema", "k": 50, "collection": "derm"}).json()
    assert {hit["image_id"] for hit in chest["hits"]} == two_collections.ids["chest"]
    assert {hit["image_id"] for hit in derm["hits"]} == two_collections.ids["derm"]
    thumbnail = api.get(derm["hits"][0]["thumbnail_url"])
    assert derm["hits"][0]["thumbnail_url"].endswith("?collection=derm")
    assert thumbnail.status_code == 200 and thumbnail.content[8:12] == b"WEBP"
    assert api.get("/api/health", params={"collection": "derm"}).json()["rows"] == len(two_collections.ids["derm"])
    assert api.get("/api/stats", params={"collection": "derm"}).json()["images"] == len(two_collections.ids["derm"])


def test_an_unknown_collection_is_404_naming_the_known_ones_but_only_to_the_token_holder(api):
    answer = api.get("/api/search", params={"q": "eczema", "collection": "neuro"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "no collection 'neuro' in this home; known: chest, derm"}
    stranger = httpx.get(f"{api.base_url}/api/search", params={"q": "eczema", "collection": "neuro"})
    assert stranger.status_code == 401 and "derm" not in stranger.text


def test_at_most_max_open_collections_stay_open_and_a_held_one_closes_when_released(two_collections):
    closed = []
    collections = OpenCollections(two_collections.settings, lambda s: s.collection, closed.append, max_open=1)
    chest = collections.acquire("chest")
    collections.acquire("derm")  # chest leaves the open ones but is still held: not closed yet
    assert collections.open_names() == ["derm"] and closed == []
    collections.release(chest)
    assert closed == ["chest"]
    with pytest.raises(UnknownCollection, match="known: chest, derm"):
        collections.acquire("neuro")


def test_collections_with_one_model_share_one_encoder_until_the_last_closes(two_collections):
    embedders = SharedEmbedders()
    chest = open_search(two_collections.settings.for_collection("chest"), embedders=embedders)
    derm = open_search(two_collections.settings.for_collection("derm"), embedders=embedders)
    try:
        # Texts no fallback query holds, so each search has to encode them.
        assert {h.image_id for h in chest.search_text("itchy red plaque on the forearm", k=50).hits} == \
            two_collections.ids["chest"]
        assert {h.image_id for h in derm.search_text("itchy red plaque on the forearm", k=50).hits} == \
            two_collections.ids["derm"]
        assert chest.info()["encoder_loaded"] and derm.info()["encoder_loaded"]
        assert embedders.loaded() == 1
        chest.close()
        assert embedders.loaded() == 1  # derm still holds it, and still answers novel texts
        assert derm.search_text("scaly patch behind the knee", k=1).hits
    finally:
        chest.close()
        derm.close()
    assert embedders.loaded() == 0


# --- MCP --------------------------------------------------------------------------------------------

def test_mcp_tools_take_a_collection(two_collections):
    from mcp.server.mcpserver.exceptions import ToolError

    from medvec.serve.mcp import build_server, collection_searches

    settings = two_collections.settings.for_collection("chest")
    search = open_search(settings)
    collections = collection_searches(settings)
    server = build_server(search, settings.home, collections)
    try:
        derm = anyio.run(server.call_tool, "search_medical_images", {"query": "eczema", "k": 50, "collection": "derm"})
        chest = anyio.run(server.call_tool, "search_medical_images", {"query": "eczema", "k": 50})
        # In process the SDK raises what a client over stdio reads as an is_error answer.
        with pytest.raises(ToolError, match="no collection 'neuro' in this home; known: chest, derm"):
            anyio.run(server.call_tool, "get_image_metadata", {"image_id": "x", "collection": "neuro"})
    finally:
        collections.close()
        search.close()
    assert {hit["image_id"] for hit in derm.structured_content["hits"]} == two_collections.ids["derm"]
    assert {hit["image_id"] for hit in chest.structured_content["hits"]} == two_collections.ids["chest"]


# --- the web page -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(two_collections):
    """The page and API over the home itself, which holds no images beside its two collections."""
    settings = two_collections.settings
    search = open_search(settings)
    collections = collection_apps(settings)
    with running(create_app(search, settings.home, collections=collections)) as base_url:
        yield base_url
    collections.close()
    search.close()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt install chromium)")
def test_the_page_picks_a_collection_and_searches_only_it(browser, site, two_collections):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(site + "/")  # the home itself is empty: the page opens its first collection
        page.wait_for_url("**/?collection=chest")
        page.wait_for_selector("#collection-picker:not([hidden])")
        assert page.eval_on_selector_all("#collection option", "os => os.map(o => o.value)") == ["chest", "derm"]
        assert set(search_for(page, "eczema")) <= two_collections.ids["chest"]
        page.select_option("#collection", "derm")
        page.wait_for_url("**/?collection=derm")
        page.wait_for_selector("#filter-view .chip")
        assert set(search_for(page, "eczema")) == two_collections.ids["derm"]  # thumbnails loaded from derm too
    finally:
        page.close()
    assert errors == []
