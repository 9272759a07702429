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

from medvec.search import Filters, NoSuchImage
from medvec.service import open_search

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"search_medical_images", "find_similar_images", "get_image_metadata"}
UNKNOWN_ID = "1.2.3.not-in-the-collection"


async def _converse(env: dict, errlog) -> dict:
    """One client session doing what an assistant would; every answer is kept for the tests."""
    transport_errors: list = []

    async def on_message(message) -> None:
        if isinstance(message, Exception):  # a stdout line that was not a protocol message
            transport_errors.append(message)

    params = StdioServerParameters(command=sys.executable, args=["-m", "medvec.cli", "mcp"], env=env, cwd=str(ROOT))
    out: dict = {"transport_errors": transport_errors}
    with anyio.fail_after(120):
        async with stdio_client(params, errlog=errlog) as (read, write):
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
    return out


@pytest.fixture(scope="module")
def conversation(search_collection, tmp_path_factory):
    errlog_path = tmp_path_factory.mktemp("mcp") / "stderr.txt"
    with open(errlog_path, "w") as errlog:
        out = anyio.run(_converse, dict(search_collection.env), errlog)
    out["stderr"] = errlog_path.read_text()
    return out


@pytest.fixture(scope="module")
def in_process(search_collection):
    search = open_search(search_collection.settings)
    yield search
    search.close()


def _hits(result) -> list[dict]:
    assert not result.is_error, result.content
    return result.structured_content["hits"]


def _same_hits(mcp_hits: list[dict], expected) -> None:
    assert [h["image_id"] for h in mcp_hits] == [h.image_id for h in expected.hits]
    assert [h["score"] for h in mcp_hits] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert [h["rank"] for h in mcp_hits] == list(range(1, len(expected.hits) + 1))


def test_lists_the_three_search_tools_with_input_schemas(conversation):
    tools = {tool.name: tool for tool in conversation["tools"]}
    assert set(tools) == TOOLS
    search = tools["search_medical_images"].input_schema
    assert search["required"] == ["query"]
    assert {"query", "k", "view", "labels", "modality", "split"} <= set(search["properties"])
    assert search["properties"]["k"]["type"] == "integer"
    assert tools["find_similar_images"].input_schema["required"] == ["image_id"]
    assert set(tools["get_image_metadata"].input_schema["properties"]) == {"image_id"}
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
    assert "source_uri" not in wire
    assert str(search_collection.sample_dir) not in wire and "chest_000.dcm" not in wire
    identifiers = set()
    for path in sorted((search_collection.sample_dir / "synthetic").glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.PatientName), str(ds.PatientID), str(ds.AccessionNumber)}
    assert identifiers and not [value for value in identifiers if value in wire]


def test_stdout_carries_only_protocol_messages(conversation):
    assert conversation["transport_errors"] == []
    assert conversation["init"].server_info.name == "medvec"
