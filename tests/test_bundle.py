"""The serverless search bundle: packing, the browser tokenizer against Python's, the ONNX text tower,
the `search_bundle` asset and `medvec bundle`, and the page itself in headless Chromium served by a plain
static file server: the same answers as the Python search path, and no request leaving its origin."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from medvec.bundle import BundleError, build_bundle
from medvec.bundle.build import EXTRA_PROMPTS, WEB_DIR, check_prompts, ort_dist_dir
from medvec.bundle.pack import pack_vectors, packing_recall, unpack_vectors
from medvec.bundle.tokenizer_export import (TokenizerNotSupported, check_with_node, export_tokenizer,
                                            python_token_ids)
from tests.conftest import ARTIFACTS, CHROMIUM

NOVEL = "an opacity that is in no fallback list"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page's tokenizer")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Debian's Chromium at /usr/bin/chromium (apt install chromium)")


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ort_web() -> Path:
    """onnxruntime-web's dist folder, installed with `npm ci` when missing (as `make web-deps` does)."""
    pytest.importorskip("onnxruntime", reason="needs the bundle extra (onnx, onnxruntime)")
    pytest.importorskip("onnx", reason="needs the bundle extra (onnx, onnxruntime)")
    try:
        return ort_dist_dir()
    except BundleError:
        pass
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("needs onnxruntime-web: npm not found (install Node.js, then run `make web-deps`)")
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB_DIR,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"npm ci could not install onnxruntime-web (offline?): {done.stderr.strip()[-300:]}")
    return ort_dist_dir()


@pytest.fixture(scope="module")
def embedder(search_collection):
    from medvec.embedders.factory import embedder_config, open_embedder

    with open_embedder(embedder_config(search_collection.settings, device="cpu")) as embedder:
        yield embedder


@pytest.fixture(scope="module")
def evaluation(search_collection, tmp_path_factory):
    """An evaluation report and plot for the shared collection, kept outside its (read-only) home."""
    from medvec.tables import database
    from medvec.evaluation.retrieval import evaluate_models, recall_curve_png
    from medvec.evaluation.targets import eval_targets

    settings = search_collection.settings
    report = evaluate_models(database.connect(settings.lancedb_uri), eval_targets(settings), split="all")
    plot = tmp_path_factory.mktemp("eval") / "recall_at_k.png"
    plot.write_bytes(recall_curve_png(report))
    return report, plot


@pytest.fixture(scope="module")
def bundle(search, embedder, search_collection, evaluation, ort_web, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "site"
    report, plot = evaluation
    build_bundle(search, embedder, out, home=search_collection.settings.home, eval_report=report, eval_plot=plot)
    return out


@contextmanager
def static_server(folder: Path):
    """A plain static file server, as GitHub Pages or nginx would be: no API, no special headers."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a browser that closes a tab mid-download resets its connections

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site(bundle):
    """The bundle's address, served from a sub-folder as GitHub Pages serves a project site: every
    path the page uses must be relative to its own folder."""
    with static_server(bundle.parent) as base_url:
        yield f"{base_url}/{bundle.name}"


@pytest.fixture
def page(browser):
    """A fresh page recording every request of the page and its worker, and every error it reports."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.requests, page.errors = [], []
    context.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()


# --- packing ---------------------------------------------------------------------------------------

def test_packed_vectors_are_little_endian_and_round_trip():
    vectors = np.array([[1.0, -2.0, 0.5, 0.0], [0.0, 0.25, -0.25, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    half = pack_vectors(vectors, "float16")
    assert half.data[:4] == b"\x00\x3c\x00\xc0"  # 1.0 and -2.0 as little-endian IEEE halves
    assert np.array_equal(unpack_vectors(half), vectors)
    codes = pack_vectors(vectors, "int8")
    assert codes.data[:4] == bytes([64, 129, 32, 0])  # row 0 scaled by 2/127: 63.5 → 64, -127 (0x81), 31.75 → 32
    assert codes.scales_offset % 4 == 0 and len(codes.data) == codes.scales_offset + 3 * 4
    assert np.abs(unpack_vectors(codes) - vectors).max() <= 2 / 127 / 2 + 1e-6  # half a step of the widest row
    assert codes.layout("data/embeddings.bin")["byte_order"] == "little"


def test_packing_cost_is_measured_against_float32():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.1 * rng.standard_normal((50, 64)).astype(np.float32)
    half, codes = packing_recall(vectors, queries, "float16"), packing_recall(vectors, queries, "int8")
    assert half["recall"] >= codes["recall"] and half["recall"] >= 0.99
    assert 0.9 <= codes["recall"] <= 1.0 and codes["max_score_error"] > half["max_score_error"]
    itself = packing_recall(vectors[:100], vectors[:100], "float16", exclude_self=True)
    assert itself["recall"] == 1.0 and itself["k"] == 10


SCAN_SCRIPT = """
import { readFileSync } from "node:fs";
import { PackedVectors, topK } from "%s";
const { file, layout, query, k, exclude } = JSON.parse(process.argv[1]);
const bytes = readFileSync(file);
const vectors = new PackedVectors(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length), layout);
const hits = topK(vectors.scores(Float32Array.from(query)), k, exclude);
const again = vectors.vector(exclude);
console.log(JSON.stringify({ ...hits, vector: Array.from(again) }));
"""


@needs_node
@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_page_scan_ranks_packed_vectors_like_numpy(precision, tmp_path):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3001, 37)).astype(np.float32)  # a width that is not a multiple of 4
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    packed = pack_vectors(vectors, precision)
    (tmp_path / "embeddings.bin").write_bytes(packed.data)
    query = vectors[7] + 0.3 * rng.standard_normal(37).astype(np.float32)
    request = {"file": str(tmp_path / "embeddings.bin"), "layout": packed.layout("embeddings.bin"),
               "query": query.tolist(), "k": 10, "exclude": 11}
    script = SCAN_SCRIPT % (WEB_DIR / "search.js").as_uri()
    done = subprocess.run(["node", "--input-type=module", "-e", script, json.dumps(request)], capture_output=True,
                          text=True, timeout=60, check=True)
    page = json.loads(done.stdout)
    approx = unpack_vectors(packed)
    scores = approx @ query
    scores[11] = -np.inf
    expected = np.argsort(-scores, kind="stable")[:10]
    assert page["rows"] == expected.tolist()
    assert np.allclose(page["scores"], scores[expected], atol=1e-5)
    row = approx[11] / np.linalg.norm(approx[11])
    assert np.allclose(page["vector"], row, atol=1e-6)


# --- the browser tokenizer -------------------------------------------------------------------------

def _unigram_siglip_tokenizer(folder: Path):
    """A real SentencePiece unigram model, trained here on chest X-ray phrases, in SigLIP's tokenizer class:
    the same code path as google/siglip-*, offline."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    from medvec.search.precompute import FALLBACK_QUERIES

    corpus = [*FALLBACK_QUERIES, "the heart is enlarged with blunted costophrenic angles",
              "no acute cardiopulmonary process is seen on this frontal radiograph"] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=120,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"))


PROMPTS = check_prompts() + [
    "Pleural effusion.", "q-q quux!!  Cardiomegaly", "", "ÜNKNOWN © x-ray", "ﬁndings of edema", "émphysème",
    "1st rib fracture #2", "x—ray “quoted” 'single'", "PNEUMOTHORAX?!", "heart " * 80,
]


@needs_node
def test_page_tokenizer_gives_siglip_sentencepiece_ids(tmp_path):
    tokenizer = _unigram_siglip_tokenizer(tmp_path)
    spec = export_tokenizer(tokenizer, 64)
    assert spec["model"] == "unigram" and spec["normalize"][0] == "lowercase"
    expected = python_token_ids(tokenizer, PROMPTS, 64)
    check = check_with_node(spec, PROMPTS, expected)
    assert check["checked"] and check["mismatches"] == [] and check["matching"] == len(PROMPTS)
    # What makes SigLIP's tokenisation its own: case and punctuation gone, unknown runs fused, 64 ids.
    ids = dict(zip(PROMPTS, check["js_ids"]))
    assert ids["Pleural effusion."] == ids["pleural effusion"]
    assert all(len(row) == 64 for row in check["js_ids"])
    assert ids["heart " * 80][-1] == tokenizer.eos_token_id  # truncated, then the end token


@needs_node
def test_page_tokenizer_gives_tiny_siglip_word_level_ids(embedder):
    spec = export_tokenizer(embedder.tokenizer, 64)
    assert spec["model"] == "wordlevel"
    check = check_with_node(spec, PROMPTS, python_token_ids(embedder.tokenizer, PROMPTS, 64))
    assert check["mismatches"] == [] and check["matching"] == len(PROMPTS)


def _byte_level_bpe_clip_tokenizer():
    """A real byte-level BPE (CLIP's pipeline: NFC, whitespace collapsed, lower case, CLIP's regex, bytes to
    printable characters, `</w>` ending each word), trained here on chest X-ray phrases and loaded in
    transformers' CLIPTokenizer, as openai/clip-* and BiomedCLIP-style CLIP checkpoints are."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import CLIPTokenizer

    from medvec.search.precompute import FALLBACK_QUERIES

    core = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    core.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                            normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [*FALLBACK_QUERIES, "the heart is enlarged with blunted costophrenic angles",
              "there's no pneumothorax, isn't it? 2.5 cm nodule at T4-T5"] * 5
    core.train_from_iterator(corpus, trainer)
    model = json.loads(core.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges)


@needs_node
def test_page_tokenizer_gives_clip_byte_level_bpe_ids():
    from medvec.bundle.text_model import tokenizer_prompts

    tokenizer = _byte_level_bpe_clip_tokenizer()
    spec = export_tokenizer(tokenizer, 77)
    assert spec["model"] == "bpe" and spec["end_of_word_suffix"] == "</w>" and spec["merges"]
    texts = [*tokenizer_prompts(), *PROMPTS, "<|endoftext|> typed as text", "naïve 🫁 «quoted» it'll", "x" * 300,
             "PLEURAL \t Effusion"]
    assert len(texts) >= 500
    expected = python_token_ids(tokenizer, texts, 77)
    check = check_with_node(spec, texts, expected)
    assert check["mismatches"] == [] and check["matching"] == len(texts)
    # What makes it CLIP's: <|startoftext|> ... <|endoftext|>, padded with <|endoftext|> to 77; merged words
    # end in </w>; bytes the vocabulary lacks after merging become <|endoftext|>, as in Python.
    ids = dict(zip(texts, check["js_ids"]))
    start, end = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    assert ids["pleural effusion"][:4] == [start, *tokenizer.convert_tokens_to_ids(["pleural</w>", "effusion</w>"]),
                                           end]
    assert all(len(row) == 77 and row[0] == start for row in check["js_ids"])
    assert ids["PLEURAL \t Effusion"] == ids["pleural effusion"]  # case and spacing are normalised away


def _biomedbert_wordpiece_tokenizer():
    """An uncased BERT WordPiece like BiomedBERT's, trained here on chest X-ray phrases."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    from medvec.search.precompute import FALLBACK_QUERIES

    core = Tokenizer(WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator([*FALLBACK_QUERIES, "there's no pneumothorax, isn't it? 2.5 cm nodule at T4-T5 肺"] * 5,
                             trainers.WordPieceTrainer(vocab_size=300, show_progress=False,
                                                       special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


@needs_node
def test_page_tokenizer_gives_biomedbert_wordpiece_ids():
    """BiomedCLIP's text tower reads BiomedBERT's uncased WordPiece: a real one, trained here, with BERT's
    normaliser (control characters, CJK, accents, case) and pre-tokenizer (each punctuation mark a word)."""
    from medvec.bundle.text_model import tokenizer_prompts

    tokenizer = _biomedbert_wordpiece_tokenizer()
    texts = [*tokenizer_prompts(), *PROMPTS, "肺炎 pneumonia", "x" * 150, "a\u0085b\ufeffc\u200bd", "Ｘ－ＲＡＹ İstanbul",
             "[SEP] typed as text"]
    spec = export_tokenizer(tokenizer, 256)
    assert spec["model"] == "wordpiece"
    check = check_with_node(spec, texts, python_token_ids(tokenizer, texts, 256))
    assert check["mismatches"] == [] and check["matching"] == len(texts) >= 500
    ids = dict(zip(texts, check["js_ids"]))
    assert ids["x" * 150][:3] == [2, 1, 3]  # longer than 100 characters: one [UNK]
    period = tokenizer.convert_tokens_to_ids(".")
    assert ids["Pleural effusion."][:5] == [*ids["pleural effusion"][:3], period, 3]  # "." is its own word


def test_tokenizers_the_page_cannot_run_are_refused():
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(Unigram([("<unk>", 0.0), ("a", -1.0)], 0)),
                                      unk_token="<unk>", pad_token="<unk>")
    with pytest.raises(TokenizerNotSupported, match="Unigram"):
        export_tokenizer(unigram, 64)


# --- the build -------------------------------------------------------------------------------------

def test_bundle_holds_the_model_vectors_answers_and_checks(bundle, search, embedder):
    import onnxruntime

    manifest = json.loads((bundle / "bundle.json").read_text())
    info = search.info()
    assert manifest["schema"] == "medvec.bundle/1" and manifest["images"] == info["rows"] == 38
    assert manifest["table_version"] == info["table_version"] and manifest["model"]["no_retrieval_quality"]
    checks = manifest["checks"]
    assert checks["onnx"]["min_cosine"] >= 0.999 and checks["onnx"]["prompts"] >= 50
    assert checks["tokenizer"]["matching"] == checks["tokenizer"]["prompts"]
    # The text tower ships as int8 (auto): a fraction of float32's bytes, and the same answers on the fallbacks.
    text = checks["text_precision"]
    assert text["requested"] == "auto" and text["chosen"] == "int8" and manifest["text_model"]["precision"] == "int8"
    assert text["overlap"] >= 0.95 and text["queries"] == 50 and text["int8_bytes"] < text["float32_bytes"]
    assert manifest["text_model"]["bytes"] == text["int8_bytes"] == (bundle / "model" / "text.onnx").stat().st_size
    assert checks["tokenizer"]["prompts"] >= 300
    assert checks["packing"]["chosen"] == "float16" and checks["packing"]["float16"]["text_queries"]["recall"] == 1.0
    assert (bundle / "data" / "embeddings.bin").stat().st_size == 38 * 64 * 2
    assert (bundle / "data" / "similar.bin").stat().st_size == 38 * manifest["similar"]["k"] * 8
    assert manifest["thumbs"]["count"] == 38 and len(list((bundle / "thumbs").rglob("*.webp"))) == 38
    assert manifest["metrics"] and json.loads((bundle / "data" / "metrics.json").read_text())["model"]["model"] == \
        "tiny-siglip"
    # Only the runtime's WebAssembly build is shipped, with its licence.
    assert sorted(p.name for p in (bundle / "vendor").iterdir()) == [
        "LICENSE.onnxruntime-web.txt", "ort-wasm-simd-threaded.wasm", "ort.wasm.bundle.min.js"]
    assert manifest["sizes"]["total"] == sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) - \
        (bundle / "bundle.json").stat().st_size

    index = json.loads((bundle / "data" / "index.json").read_text())
    assert not {"subject_key", "study_id", "source_uri", "batch"} & set(index)  # a public page has no use for them
    texts = [NOVEL, *EXTRA_PROMPTS[:3]]
    ids = np.asarray(python_token_ids(embedder.tokenizer, texts, 64), dtype=np.int64)
    session = onnxruntime.InferenceSession(str(bundle / "model" / "text.onnx"), providers=["CPUExecutionProvider"])
    onnx_vectors = session.run(["text_embeds"], {"input_ids": ids})[0]
    cosines = (onnx_vectors * embedder.embed_texts(texts)).sum(axis=1)
    assert cosines.min() >= 0.999


def test_int8_text_tower_is_kept_only_when_its_answers_match_float32(embedder, search, tmp_path):
    """auto keeps int8 when its top 10 matches float32's on the fallback queries, else leaves the float32
    graph in place and says why; int8 asked for is kept either way, its failed check recorded."""
    from medvec.bundle.export_onnx import cpu_float32_text_tower, export_text_tower
    from medvec.bundle.quantize import choose_text_precision
    from medvec.search.precompute import FALLBACK_QUERIES

    queries = list(FALLBACK_QUERIES)
    ids = python_token_ids(embedder.tokenizer, queries, 64)
    images = search.snapshot().index.vectors
    module = cpu_float32_text_tower(embedder)
    checks = {}
    for name, requested, bar in (("passes", "auto", 0.95), ("fails", "auto", 1.01), ("forced", "int8", 1.01),
                                 ("float32", "float32", 0.95)):
        path = tmp_path / name / "text.onnx"
        export_text_tower(module, ids, path)
        float32_bytes = path.stat().st_size
        checks[name] = choose_text_precision(path, requested, ids, queries, images, min_overlap=bar)
        assert checks[name]["float32_bytes"] == float32_bytes
        assert path.stat().st_size == (checks[name]["int8_bytes"] if checks[name]["chosen"] == "int8"
                                       else float32_bytes)
        assert [p.name for p in path.parent.iterdir()] == ["text.onnx"]  # no scratch files left behind
    assert checks["passes"]["chosen"] == "int8" and checks["passes"]["passed"]
    assert checks["passes"]["overlap"] >= 0.95 and checks["passes"]["queries"] == 50
    assert checks["fails"]["chosen"] == "float32" and not checks["fails"]["passed"]
    assert "kept float32" in checks["fails"]["reason"] and checks["fails"]["worst_query"] in queries
    assert checks["forced"]["chosen"] == "int8" and not checks["forced"]["passed"]
    assert checks["float32"]["chosen"] == "float32" and "overlap" not in checks["float32"]


@pytest.fixture(scope="module")
def demo_model():
    """`medvec demo`'s model (medvec-demo-clip, shipped in the package)."""
    from medvec.embedders.transformers_local import TransformersEmbedder
    from medvec.models.demo_clip import WEIGHTS_DIR
    from medvec.models.registry import resolve_model

    with TransformersEmbedder(resolve_model("medvec-demo-clip"), WEIGHTS_DIR) as demo:
        yield demo


def test_demo_model_int8_text_tower_is_under_a_third_of_float32_and_ranks_like_it(demo_model, tmp_path):
    """The demo's tower is 64 wide: unless the file is compacted its names and shapes outweigh its int8 weights."""
    from medvec.bundle.export_onnx import cpu_float32_text_tower, export_text_tower
    from medvec.bundle.quantize import choose_text_precision
    from medvec.models.demo_clip.data import training_images
    from medvec.search.precompute import FALLBACK_QUERIES

    pictures = training_images(60, 11, demo_model.image_preparer())
    images = demo_model.embed_prepared([picture.pixels for picture in pictures])
    queries = list(FALLBACK_QUERIES)
    ids = python_token_ids(demo_model.tokenizer, queries, demo_model.spec.text_length)
    path = tmp_path / "text.onnx"
    export_text_tower(cpu_float32_text_tower(demo_model), ids, path)
    check = choose_text_precision(path, "auto", ids, queries, images)
    assert check["chosen"] == "int8" and check["overlap"] >= 0.95
    assert check["int8_bytes"] * 3 <= check["float32_bytes"]  # both files as the build writes them


def test_compacting_an_onnx_file_keeps_its_answers_and_drops_what_only_people_read(demo_model, tmp_path):
    """Quantised as onnxruntime writes it (long names, every intermediate shape, a zero point per weight),
    then compacted: the same numbers (to float32 rounding: onnxruntime's optimiser sees the graph without the
    shapes) from a smaller file with the same input and output."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from medvec.bundle.compact_onnx import compact_onnx
    from medvec.bundle.export_onnx import cpu_float32_text_tower, export_text_tower

    ids = python_token_ids(demo_model.tokenizer, check_prompts(), demo_model.spec.text_length)
    export_text_tower(cpu_float32_text_tower(demo_model), ids, tmp_path / "float32.onnx")
    quantize_dynamic(str(tmp_path / "float32.onnx"), str(tmp_path / "as_written.onnx"), weight_type=QuantType.QInt8)
    shutil.copyfile(tmp_path / "as_written.onnx", tmp_path / "compacted.onnx")
    size = compact_onnx(tmp_path / "compacted.onnx")

    def run(name):
        session = onnxruntime.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return session.run(["text_embeds"], {"input_ids": np.asarray(ids, np.int64)})[0]

    assert np.allclose(run("compacted.onnx"), run("as_written.onnx"), rtol=0, atol=1e-6)
    before, after = onnx.load(str(tmp_path / "as_written.onnx")), onnx.load(str(tmp_path / "compacted.onnx"))
    assert size < 0.95 * (tmp_path / "as_written.onnx").stat().st_size  # the float32 input was compacted already
    assert [v.name for v in after.graph.input] == ["input_ids"] and [v.name for v in after.graph.output] == \
        ["text_embeds"]
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    assert len(after.graph.value_info) == 0 and {n.name for n in after.graph.node} == {""}
    contents = [(t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes()) for t in after.graph.initializer]
    assert len(set(contents)) == len(contents) < len(before.graph.initializer)  # the equal zero points are one


def test_a_folder_that_is_not_a_bundle_is_never_replaced(search, embedder, search_collection, ort_web, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a Medvec bundle"):
        build_bundle(search, embedder, tmp_path, home=search_collection.settings.home)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_without_precomputed_answers_the_build_says_what_to_materialise(search_collection, embedder, ort_web,
                                                                         tmp_path):
    from medvec.tables import database
    from medvec.search.images import ImageSearch, fallback_table_name

    home = tmp_path / "home"
    shutil.copytree(search_collection.settings.home, home)
    database.connect(str(home / "lancedb")).drop_table(fallback_table_name("tiny_siglip"))
    search = ImageSearch(str(home / "lancedb"), "tiny_siglip", home=home)
    with pytest.raises(BundleError, match="materialise fallback_queries"):
        build_bundle(search, embedder, tmp_path / "site", home=home)
    assert not (tmp_path / "site").exists()


def test_cli_builds_a_bundle_and_replaces_it_whole(search_collection, ort_web, tmp_path, monkeypatch, capsys):
    from medvec.cli import main

    for name, value in search_collection.env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "site"
    assert main(["bundle", str(out), "--precision", "int8", "--text-precision", "float32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "int8" and summary["images"] == 38 and summary["sizes"]["vectors"] == 38 * 68
    assert summary["text_precision"] == "float32" and summary["checks"]["text_precision"]["reason"] == \
        "float32 requested"
    (out / "stale.txt").write_text("from an older build")
    assert main(["bundle", str(out), "--no-thumbnails"]) == 0
    printed = capsys.readouterr().out
    assert "serve it with any static file server" in printed and "text tower: int8 (int8 top-10 overlap" in printed
    assert not (out / "stale.txt").exists() and not list((out / "thumbs").rglob("*.webp"))


def test_search_bundle_asset_materialises_into_the_home(search_collection, ort_web, tmp_path):
    import dagster as dg

    from assets.bundle import search_bundle
    from assets.embeddings import embedding_model
    from medvec.settings import Settings
    from resources import home_resources
    from resources.embedders import embedder_resource

    home = tmp_path / "home"
    shutil.copytree(search_collection.settings.home, home)
    settings = Settings.from_env({**search_collection.env, "MEDVEC_HOME": str(home)})
    with dg.instance_for_test() as instance:
        result = dg.materialize([embedding_model, search_bundle], instance=instance,
                                resources={**home_resources(settings),
                                           "embedder": embedder_resource(settings)})
    assert result.success
    [event] = result.asset_materializations_for_node("search_bundle")
    metadata = event.metadata
    assert metadata["bundle"].value == str(home / "bundles" / "tiny_siglip")
    assert metadata["images"].value == 38 and metadata["onnx_min_cosine"].value >= 0.999
    assert metadata["image_recall_at_10_vs_float32"].value == 1.0
    assert (home / "bundles" / "tiny_siglip" / "index.html").exists()


# --- the page --------------------------------------------------------------------------------------

def _search_in_page(page, text: str, route: str) -> tuple[list[str], list[float]]:
    page.fill("#q", text)
    page.click("#search-button")
    page.wait_for_function(f"() => document.querySelector('#summary').dataset.route === '{route}'"
                           f" && document.querySelector('#summary').textContent.includes({json.dumps(text)})",
                           timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('.card img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    ids = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.imageId)")
    scores = page.eval_on_selector_all(".card .score", "nodes => nodes.map(n => parseFloat(n.textContent))")
    return ids, scores


def _assert_same_ranking(js_ids, js_scores, python_all, k, tolerance):
    """The page's top k is Python's, up to the order of images whose scores differ by less than the
    packing's score error (the sample has near-duplicate images whose scores differ by 1e-7)."""
    score_of = {hit.image_id: hit.score for hit in python_all}
    expected = [hit.image_id for hit in python_all[:k]]
    assert len(js_ids) == k and len(set(js_ids)) == k
    for rank, (image_id, score) in enumerate(zip(js_ids, js_scores)):
        assert abs(score - score_of[image_id]) <= tolerance + 5e-5  # the page shows 4 decimals
        assert image_id == expected[rank] or abs(score_of[image_id] - score_of[expected[rank]]) <= 2 * tolerance


def _onnx_ranking(bundle: Path, search, embedder, text: str) -> list:
    """Every image ranked by the bundle's own text tower (onnxruntime on the CPU) and the float32 vectors."""
    import onnxruntime
    from types import SimpleNamespace

    session = onnxruntime.InferenceSession(str(bundle / "model" / "text.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray(python_token_ids(embedder.tokenizer, [text], 64), dtype=np.int64)
    loaded = search.snapshot()
    scores = loaded.index.vectors @ session.run(["text_embeds"], {"input_ids": ids})[0][0]
    return [SimpleNamespace(image_id=loaded.ids[row], score=float(scores[row])) for row in np.argsort(-scores)]


@pytest.mark.slow
@needs_chromium
def test_page_answers_like_the_python_search_path_without_leaving_its_folder(page, site, bundle, search, embedder):
    manifest = json.loads((bundle / "bundle.json").read_text())
    tolerance = manifest["checks"]["packing"]["float16"]["text_queries"]["max_score_error"] + 1e-4
    page.goto(site + "/")
    page.wait_for_selector("#q:not([disabled])")
    assert "tiny-siglip · 38 images" in page.inner_text("#status")
    assert "random weights" in page.inner_text("#warning")

    # A common finding answers from the precomputed list, exactly as `medvec search` does.
    ids, scores = _search_in_page(page, "Pleural Effusion.", "fallback")
    python = search.search_text("Pleural Effusion.", k=12)
    assert python.route == "fallback"
    assert ids == [hit.image_id for hit in python.hits]
    assert scores == [round(hit.score, 4) for hit in python.hits]

    # A novel query is tokenised and encoded in the worker by the int8 text tower and ranked over the packed
    # vectors: the top hit is the Python search path's (float32), the ranking the int8 graph's in onnxruntime.
    assert manifest["text_model"]["precision"] == "int8"
    ids, scores = _search_in_page(page, NOVEL, "index")
    python = search.search_text(NOVEL, k=12)
    assert python.route == "index" and ids[0] == python.hits[0].image_id
    _assert_same_ranking(ids, scores, _onnx_ranking(bundle, search, embedder, NOVEL), 12, tolerance)
    assert "ready" in page.inner_text("#model-status")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "bundle.png"), full_page=True)

    # Find-similar answers from the neighbour lists.
    page.click(f".card[data-image-id='{ids[0]}'] .similar")
    page.wait_for_function("() => document.querySelector('#summary').dataset.route === 'similar_images'")
    similar = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.imageId)")
    assert similar == [hit.image_id for hit in search.similar(ids[0], k=12).hits]
    # More neighbours than the lists hold: the worker ranks the packed vectors around that image.
    page.fill("#k", "25")
    page.click(f".card[data-image-id='{similar[1]}'] .similar")
    page.wait_for_function("() => document.querySelector('#summary').dataset.route === 'index'"
                           " && document.querySelectorAll('.card').length === 25")
    wide = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.imageId)")
    wide_scores = page.eval_on_selector_all(".card .score", "nodes => nodes.map(n => parseFloat(n.textContent))")
    image_error = manifest["checks"]["packing"]["float16"]["image_queries"]["max_score_error"]
    python_wide = search.similar(similar[1], k=37)  # every other image
    _assert_same_ranking(wide, wide_scores, python_wide.hits, 25, 2 * image_error + 1e-4)

    # The page's tokenizer, in Chromium this time, against Python's.
    in_browser = page.evaluate("""async (texts) => {
        const { Tokenizer } = await import('./tokenizer.js');
        const tokenizer = new Tokenizer(await (await fetch('model/tokenizer.json')).json());
        return texts.map((text) => tokenizer.encode(text));
    }""", PROMPTS)
    assert in_browser == python_token_ids(embedder.tokenizer, PROMPTS, 64)
    # CLIP's byte-level BPE and BERT's WordPiece too: Chromium's regex engine and TextEncoder, not only Node's.
    for other, length in ((_byte_level_bpe_clip_tokenizer(), 77), (_biomedbert_wordpiece_tokenizer(), 256)):
        in_browser = page.evaluate("""async ([spec, texts]) => {
            const { Tokenizer } = await import('./tokenizer.js');
            const tokenizer = new Tokenizer(spec);
            return texts.map((text) => tokenizer.encode(text));
        }""", [export_tokenizer(other, length), PROMPTS])
        assert in_browser == python_token_ids(other, PROMPTS, length)

    page.click("#tab-metrics")
    page.wait_for_selector("#metrics-models tbody tr")
    assert "text → image (macro)" in page.inner_text("#metrics-models")
    prompts = manifest["checks"]["tokenizer"]["prompts"]
    assert f"{prompts} of {prompts} prompts give the same token ids" in page.inner_text("#bundle-checks")

    assert any(url.endswith("/data/embeddings.bin") for url in page.requests)  # the worker's requests are seen
    assert any(url.endswith("/vendor/ort-wasm-simd-threaded.wasm") for url in page.requests)
    assert [url for url in page.requests if not url.startswith(site + "/")] == []
    assert page.errors == []



@pytest.mark.slow
@needs_chromium
def test_common_queries_answer_before_the_index_and_the_model_have_loaded(page, site, search):
    held = []
    page.context.route(lambda url: url.endswith(("/data/index.json", "/model/text.onnx")),
                       lambda route: held.append(route))
    page.goto(site + "/")
    page.wait_for_selector("#q:not([disabled])")
    ids, _ = _search_in_page(page, "cardiomegaly", "fallback")
    assert ids == [hit.image_id for hit in search.search_text("cardiomegaly", k=12).hits]
    assert len(held) == 2 and "loading" in page.inner_text("#model-status")
    for route in held:
        route.continue_()
    page.wait_for_function("() => document.querySelector('#model-status').textContent.includes('ready')")
    assert page.errors == []


def test_clip_text_tower_exports_padded_to_77_and_matches_the_masked_python_path(tmp_path):
    """CLIP embeds text padded to the longest with an attention mask; the bundle's graph takes 77 ids and no
    mask. Causal attention and pooling at the first end token make the two the same vector."""
    import onnxruntime

    from medvec.bundle.export_onnx import cpu_float32_text_tower, export_text_tower
    from medvec.embedders.transformers_local import TransformersEmbedder
    from medvec.models.registry import resolve_model
    from medvec.models.tiny import build_tiny_clip

    clip = TransformersEmbedder(resolve_model("clip-b32", dim=32, image_size=32), build_tiny_clip(tmp_path / "clip"))
    texts = [NOVEL, "pleural effusion", "heart size is " + "normal and " * 40 + "stable", ""]
    ids = python_token_ids(clip.tokenizer, texts, 77)
    assert {len(row) for row in ids} == {77}
    export_text_tower(cpu_float32_text_tower(clip), ids, tmp_path / "text.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "text.onnx"), providers=["CPUExecutionProvider"])
    onnx_vectors = session.run(["text_embeds"], {"input_ids": np.asarray(ids, np.int64)})[0]
    assert (onnx_vectors * clip.embed_texts(texts)).sum(axis=1).min() >= 0.999
