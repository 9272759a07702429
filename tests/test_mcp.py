"""`medvec mcp` as an assistant meets it: a real subprocess, the MCP client library, stdio.

The sample is embedded with a random-weights model, so the tests check structure and that the
tools answer exactly what `ImageSearch` answers in-process on the same home, not relevance.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from pydicom import dcmread

from medvec.search.reports import ReportSearch
from medvec.search.images import Filters, NoSuchImage
from tests.test_http_api import home_without_reports

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"search_medical_images", "find_similar_images", "get_image_metadata", "search_reports", "get_image_reports",
         "search_studies"}
UNKNOWN_ID = "1.2.3.not-in-the-collection"
#: Identifiers the sample writes into its reports for the ingest scrub to remove (tests/test_reports.py).
REPORT_SENTINELS = ("Sentinelle", "Quentin", "03/14/2021", "10:45")


def _session(env: dict, errlog):
    params = StdioServerParameters(command=sys.executable, args=["-m", "medvec.cli", "mcp"], env=env, cwd=str(ROOT))
    return stdio_client(params, errlog=errlog)


async def _converse(env: dict, errlog, unreported_id: str) -> dict:
    """One client session doing what an assistant would; every answer is kept for the tests."""
    transport_errors: list = []

    async def on_message(message) -> None:
        if isinstance(message, Exception):  # a stdout line that was not a protocol message
            transport_errors.append(message)

    out: dict = {"transport_errors": transport_errors}
    with anyio.fail_after(120):
        async with _session(env, errlog) as (read, write):
            async with ClientSession(read, write, message_handler=on_message) as session:
                out["init"] = await session.initialize()
                out["tools"] = (await session.list_tools()).tools
                out["edema"] = await session.call_tool("search_medical_images", {"query": "edema", "k": 5})
                first = out["edema"].structured_content["hits"][0]["image_id"]
                out["first_id"] = first
                out["lateral"] = await session.call_tool(
                    "search_medical_images", {"query": "an enlarged heart", "k": 4, "view": ["lateral"]})
                out["thumbs"] = await session.call_tool(
                    "search_medical_images", {"query": "edema", "k": 5, "thumbnails": 2})
                out["similar"] = await session.call_tool("find_similar_images", {"image_id": first, "k": 6})
                out["similar_pa"] = await session.call_tool(
                    "find_similar_images", {"image_id": first, "k": 3, "view": ["PA"], "split": ["train", "test"]})
                out["metadata"] = await session.call_tool("get_image_metadata", {"image_id": first})
                out["unknown_similar"] = await session.call_tool("find_similar_images", {"image_id": UNKNOWN_ID})
                out["unknown_metadata"] = await session.call_tool("get_image_metadata", {"image_id": UNKNOWN_ID})
                out["bad_k"] = await session.call_tool("search_medical_images", {"query": "edema", "k": 0})
                out["after_errors"] = await session.call_tool("get_image_metadata", {"image_id": first})
                out["reports"] = await session.call_tool("search_reports", {"query": "small left effusion", "k": 5})
                out["reports_bm25_pa"] = await session.call_tool(
                    "search_reports", {"query": "bilateral pleural effusions", "k": 4, "mode": "bm25", "view": ["PA"],
                                       "thumbnails": 2})
                studied = out["reports"].structured_content["studies"][0]["image_ids"][0]
                out["studied_id"] = studied
                out["image_reports"] = await session.call_tool("get_image_reports", {"image_id": studied})
                out["no_image_reports"] = await session.call_tool("get_image_reports", {"image_id": unreported_id})
                out["unknown_reports"] = await session.call_tool("get_image_reports", {"image_id": UNKNOWN_ID})
                out["bad_mode"] = await session.call_tool("search_reports", {"query": "edema", "mode": "fuzzy"})
    return out


async def _ask_without_reports(env: dict, errlog) -> dict:
    """A home with images and no reports table."""
    out: dict = {}
    with anyio.fail_after(120):
        async with _session(env, errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out["reports"] = await session.call_tool("search_reports", {"query": "small left effusion"})
                hit = (await session.call_tool("search_medical_images", {"query": "edema", "k": 1}))
                image_id = hit.structured_content["hits"][0]["image_id"]
                out["image_reports"] = await session.call_tool("get_image_reports", {"image_id": image_id})
                out["metadata"] = await session.call_tool("get_image_metadata", {"image_id": image_id})
    return out


@pytest.fixture(scope="module")
def in_process(search):
    return search  # the same search the server subprocess answers from, run in this process


@pytest.fixture(scope="module")
def reports_in_process(in_process):
    return ReportSearch(in_process)


@pytest.fixture(scope="module")
def unreported_id(in_process, reports_in_process) -> str:
    """An image no report links to (the sample's WG04 images)."""
    return next(h.image_id for h in in_process.search_text("edema", k=100).hits
                if not reports_in_process.reports_for_image(h.image_id))


@pytest.fixture(scope="module")
def conversation(search_collection, tmp_path_factory, unreported_id):
    errlog_path = tmp_path_factory.mktemp("mcp") / "stderr.txt"
    with open(errlog_path, "w") as errlog:
        out = anyio.run(_converse, dict(search_collection.env), errlog, unreported_id)
    out["stderr"] = errlog_path.read_text()
    return out


def _hits(result) -> list[dict]:
    assert not result.is_error, result.content
    return result.structured_content["hits"]


def _same_hits(mcp_hits: list[dict], expected) -> None:
    assert [h["image_id"] for h in mcp_hits] == [h.image_id for h in expected.hits]
    assert [h["score"] for h in mcp_hits] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert [h["rank"] for h in mcp_hits] == list(range(1, len(expected.hits) + 1))


def test_lists_the_five_search_tools_with_input_schemas(conversation):
    tools = {tool.name: tool for tool in conversation["tools"]}
    assert set(tools) == TOOLS
    search = tools["search_medical_images"].input_schema
    assert search["required"] == ["query"]
    assert {"query", "k", "view", "labels", "modality", "split"} <= set(search["properties"])
    assert search["properties"]["k"]["type"] == "integer"
    assert tools["find_similar_images"].input_schema["required"] == ["image_id"]
    assert set(tools["get_image_metadata"].input_schema["properties"]) == {"image_id", "collection"}
    reports = tools["search_reports"].input_schema
    assert reports["required"] == ["query"]
    assert {"query", "k", "mode", "view", "labels", "modality", "split", "thumbnails", "collection"} == set(
        reports["properties"])
    assert reports["properties"]["mode"]["enum"] == ["hybrid", "bm25", "vector"]
    assert reports["properties"]["mode"]["default"] == "hybrid"
    assert set(tools["get_image_reports"].input_schema["properties"]) == {"image_id", "collection"}
    assert all("collection" not in tool.input_schema.get("required", []) for tool in tools.values())
    assert {"studies", "images"} <= set(tools["search_reports"].output_schema["properties"])
    assert "no reports" in tools["search_reports"].description
    assert "indication, findings, impression" in tools["get_image_reports"].description
    for tool in tools.values():
        assert len(tool.description) > 80 and not tool.description.startswith(" ")
        assert tool.annotations.read_only_hint is True
    assert "hits" in tools["search_medical_images"].output_schema["properties"]


def test_text_search_returns_k_hits_equal_to_the_in_process_search(conversation, in_process):
    result = conversation["edema"]
    hits = _hits(result)
    assert len(hits) == 5
    _same_hits(hits, in_process.search_text("edema", 5))
    for hit in hits:
        assert set(hit) == {"image_id", "score", "rank", "view_position", "labels", "split", "study_id", "modality"}
    answer = result.structured_content
    assert answer["model"] == "tiny-siglip" and answer["table"] == "images__tiny_siglip" and answer["route"]
    summary = result.content[0].text
    assert summary.startswith("5 image(s) for 'edema'") and all(h["image_id"] in summary for h in hits)


def test_view_filter_keeps_only_that_projection(conversation, in_process):
    hits = _hits(conversation["lateral"])
    assert len(hits) == 4
    assert {h["view_position"] for h in hits} == {"LATERAL"}
    _same_hits(hits, in_process.search_text("an enlarged heart", 4, Filters.of(view=["LATERAL"])))


def test_find_similar_excludes_the_image_itself(conversation, in_process):
    first = conversation["first_id"]
    hits = _hits(conversation["similar"])
    assert len(hits) == 6 and first not in {h["image_id"] for h in hits}
    _same_hits(hits, in_process.similar(first, 6))
    filtered = _hits(conversation["similar_pa"])
    assert filtered and all(h["view_position"] == "PA" and h["split"] in {"train", "test"} for h in filtered)
    _same_hits(filtered, in_process.similar(first, 3, Filters.of(view=["PA"], split=["train", "test"])))


def test_metadata_matches_the_collection_and_the_search_hit(conversation, in_process):
    first = conversation["first_id"]
    result = conversation["metadata"]
    assert not result.is_error
    metadata = result.structured_content
    assert metadata == json.loads(json.dumps(in_process.get(first)))
    assert json.loads(result.content[0].text) == metadata
    hit = conversation["edema"].structured_content["hits"][0]
    assert {k: metadata[k] for k in ("view_position", "labels", "split", "study_id", "modality")} == \
        {k: hit[k] for k in ("view_position", "labels", "split", "study_id", "modality")}


def test_unknown_id_is_a_tool_error_with_the_plain_message(conversation, in_process):
    with pytest.raises(NoSuchImage) as raised:
        in_process.get(UNKNOWN_ID)
    for name in ("unknown_similar", "unknown_metadata"):
        result = conversation[name]
        assert result.is_error is True
        assert [c.text for c in result.content] == [str(raised.value)]
    assert conversation["bad_k"].is_error is True and "k" in conversation["bad_k"].content[0].text
    # The server kept serving after the errors.
    assert conversation["after_errors"].structured_content == conversation["metadata"].structured_content


def test_thumbnails_are_the_top_hits_webp_files(conversation, search_collection, in_process):
    result = conversation["thumbs"]
    hits = _hits(result)
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 2 and all(c.mime_type == "image/webp" for c in images)
    home = search_collection.settings.home
    for hit, image in zip(hits, images):
        data = base64.b64decode(image.data)
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        assert data == (home / in_process.get(hit["image_id"])["thumb_uri"]).read_bytes()
    assert not [c for c in conversation["edema"].content if c.type == "image"]  # none unless asked


def test_no_source_paths_or_patient_identifiers_reach_the_client(conversation, search_collection):
    answers = [v for v in conversation.values() if hasattr(v, "content") and hasattr(v, "is_error")]
    wire = json.dumps([a.model_dump(mode="json", by_alias=True) for a in answers])
    assert "source_uri" not in wire and "Findings" in wire  # the report answers are on the wire
    assert not [value for value in REPORT_SENTINELS if value in wire]
    assert str(search_collection.sample_dir) not in wire and "chest_000.dcm" not in wire
    identifiers = set()
    for path in sorted((search_collection.sample_dir / "synthetic").rglob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.PatientName), str(ds.PatientID), str(ds.AccessionNumber)}
    assert identifiers and not [value for value in identifiers if value in wire]


def test_stdout_carries_only_protocol_messages(conversation):
    assert conversation["transport_errors"] == []
    assert conversation["init"].server_info.name == "medvec"


# --- reports ---------------------------------------------------------------------------------------

def test_search_reports_answers_what_report_search_answers_in_process(conversation, reports_in_process):
    result = conversation["reports"]
    assert not result.is_error, result.content
    answer = result.structured_content
    expected = reports_in_process.search("small left effusion", 5)
    assert (answer["mode"], answer["model"], answer["table"]) == ("hybrid", "tiny-siglip", "reports__tiny_siglip")
    assert [s["report_id"] for s in answer["studies"]] == [s["report_id"] for s in expected["studies"]]
    assert [s["score"] for s in answer["studies"]] == [s["score"] for s in expected["studies"]]
    for study, want in zip(answer["studies"], expected["studies"]):
        assert study["image_ids"] == [i["image_id"] for i in want["images"]] and study["image_ids"]
        assert (study["snippet"], study["impression"], study["routes"]) == (
            want["snippet"], want["impression"], want["routes"])
    assert [s["rank"] for s in answer["studies"]] == [1, 2, 3, 4, 5]
    assert "effusion" in answer["studies"][0]["snippet"].lower()
    assert [(i["image_id"], i["routes"], i["rank"]) for i in answer["images"]] == [
        (i["image_id"], i["routes"], i["rank"]) for i in expected["images"]]
    for image in answer["images"]:
        assert set(image) == {"image_id", "score", "rank", "routes", "view_position", "modality", "labels", "split",
                              "study_id", "study_key"}
        assert (image["study_key"] is not None) == ("report" in image["routes"])
    summary = result.content[0].text
    assert summary.startswith("5 report(s) (hybrid) and 5 image(s) for 'small left effusion'")
    assert "«effusion»" in summary.lower() and all(s["study_key"] in summary for s in answer["studies"])
    assert not [c for c in result.content if c.type == "image"]


def test_search_reports_takes_the_mode_the_filters_and_thumbnails(conversation, reports_in_process, in_process,
                                                                  search_collection):
    result = conversation["reports_bm25_pa"]
    assert not result.is_error, result.content
    answer = result.structured_content
    hits, _ = reports_in_process.search_reports("bilateral pleural effusions", 4, "bm25")
    assert answer["mode"] == "bm25" and all(s["routes"] == ["bm25"] for s in answer["studies"])
    assert [s["report_id"] for s in answer["studies"]] == [h.report_id for h in hits]
    assert answer["images"] and {i["view_position"] for i in answer["images"]} == {"PA"}
    expected = reports_in_process.search("bilateral pleural effusions", 4, Filters.of(view=["PA"]), "bm25")
    assert [i["image_id"] for i in answer["images"]] == [i["image_id"] for i in expected["images"]]
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 2
    home = search_collection.settings.home
    for image, hit in zip(images, answer["images"]):
        assert base64.b64decode(image.data) == (home / in_process.get(hit["image_id"])["thumb_uri"]).read_bytes()


def test_get_image_reports_gives_the_sections_of_its_studys_report(conversation, reports_in_process, unreported_id):
    result = conversation["image_reports"]
    assert not result.is_error, result.content
    studied = conversation["studied_id"]
    expected = json.loads(json.dumps(reports_in_process.reports_for_image(studied)))
    assert result.structured_content == {"image_id": studied, "reports": expected}
    report = result.structured_content["reports"][0]
    assert report["study_key"] == conversation["reports"].structured_content["studies"][0]["study_key"]
    assert report["findings"] and report["impression"] and report["indication"]
    assert f"Impression: {report['impression']}" in result.content[0].text
    none = conversation["no_image_reports"]
    assert not none.is_error and none.structured_content == {"image_id": unreported_id, "reports": []}
    assert none.content[0].text == f"No report links to image {unreported_id}."


def test_report_tool_errors_are_plain_tool_errors(conversation, in_process):
    with pytest.raises(NoSuchImage) as raised:
        in_process.get(UNKNOWN_ID)
    assert conversation["unknown_reports"].is_error is True
    assert [c.text for c in conversation["unknown_reports"].content] == [str(raised.value)]
    bad = conversation["bad_mode"]
    assert bad.is_error is True and "mode" in bad.content[0].text and "bm25" in bad.content[0].text


def test_without_reports_the_report_tools_say_so_and_the_image_tools_still_answer(search_collection, tmp_path):
    settings = home_without_reports(search_collection, tmp_path)
    env = {**search_collection.env, "MEDVEC_HOME": str(settings.home)}
    with open(tmp_path / "stderr.txt", "w") as errlog:
        out = anyio.run(_ask_without_reports, env, errlog)
    for name in ("reports", "image_reports"):
        assert out[name].is_error is True
        text = out[name].content[0].text
        assert text.startswith("no reports for tiny-siglip yet") and "medvec ingest" in text
    assert not out["metadata"].is_error and out["metadata"].structured_content["image_id"]
