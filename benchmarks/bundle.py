"""Search-bundle benchmark: size per 1,000 images, time to first answer in headless Chromium, top-k over
377,000 packed vectors in the browser, and what float16 / int8 packing costs in recall@10 at that scale.

    .venv/bin/python benchmarks/bundle.py [--images 1000] [--rows 377000] [--dims 768 1152] [--rounds 3]
        [--quick] [--demo-only] [--out benchmarks/results/bundle.json]

1. Size: the offline sample (`medvec sample-data`, synthetic chest radiographs, 256 px WebP thumbnails)
   with --images synthetic images is ingested and embedded with tiny-siglip through the real pipeline in
   a temporary home, then `build_bundle` writes it as float16 and as int8. Parts that grow with the
   collection (vectors, index, answers, thumbnails) are scaled to 1,000 images; the runtime
   (onnxruntime-web's WebAssembly build), the page and the text model are paid once. Vector bytes for the
   real models' widths (768: SigLIP base; 1152: SigLIP so400m, MedSigLIP) follow from the layout; the
   SigLIP-base-shaped text tower (below) gives the size of a real text model.
2. Time to first answer: the bundle served by a plain static file server on 127.0.0.1 (Python's
   ThreadingHTTPServer, no compression), a fresh Chromium context per round (empty cache), the query
   typed as soon as the search box is enabled; the time is the page's `medvec:answer` performance mark,
   in ms since navigation start. Fallback = a common query answered from the stored list; novel = a query
   tokenised and encoded in the worker (this includes fetching and compiling the runtime and the model),
   then ranked over the packed vectors; warm novel = another novel query once the model is loaded, as the
   page reports it (tokenise + encode + scan). Measured for tiny-siglip and for a copy of the bundle whose
   text tower is a SigLIP-base-shaped one (12 layers, width 768, 32,000-token vocabulary; random weights,
   built here: same size and compute as google/siglip-base-patch16-224's) over 768-d synthetic vectors.
3. Top-k over --rows packed vectors: `web/search.js` (the page's own scan) in Chromium, one thread,
   k=10, on random codes generated in the page, per precision and width; best and median of --rounds+2.
4. Packing recall at scale: the clustered synthetic collection of benchmarks/search.py (--rows x 768)
   and its three query kinds; recall@10 of the float16 and int8 scans against the exact float32 top 10,
   and the largest score error.
5. The demo collection's text tower (--demo-only runs just this): `medvec demo`'s sample (36 synthetic
   images and the WG04 radiographs) ingested with medvec-demo-clip, bundled with the text tower as `auto`
   chooses it and as float32: the int8 file's size against float32's, the build's top-10 overlap check,
   and the int8 bundle's answers in Chromium.

Progress goes to stderr; the report (markdown) to stdout; every number as JSON to --out.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run from a checkout without an editable install
        sys.path.insert(0, str(path))

from medvec.bundle import BundleOptions, build_bundle  # noqa: E402 - after the sys.path fix above
from medvec.bundle.export_onnx import text_module, export_text_tower  # noqa: E402
from medvec.bundle.pack import pack_vectors, unpack_vectors  # noqa: E402
from medvec.bundle.quantize import choose_text_precision  # noqa: E402
from medvec.search.precompute import FALLBACK_QUERIES  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FALLBACK_QUERY = "pleural effusion"
NOVEL_QUERIES = ("an opacity that is in no fallback list", "left lower lobe consolidation with air bronchograms")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mb(value: float) -> float:
    return round(value / 1e6, 3)


# --- 1. a collection and its bundles ------------------------------------------------------------------

def build_collection(workdir: Path, images: int, model: str = "tiny-siglip"):
    import dagster as dg

    from medvec.sample.writer import write_sample_data
    from medvec.settings import Settings
    from pipelines.ingest import ingest

    # Synthetic sample data: the development pseudonym key is allowed, as `medvec demo` allows it (a key given
    # only in this dict would not reach the Dagster runs' EnvVar, and ingest refuses it).
    env = {"MEDVEC_HOME": str(workdir / "home"), "MEDVEC_ALLOW_DEV_KEY": "1", "MEDVEC_MODEL": model}
    settings = Settings.from_env(env)
    started = time.perf_counter()
    sample = write_sample_data(workdir / "sample", count=images)
    with dg.instance_for_test() as instance:
        summary = ingest(str(sample.out_dir), settings, batch_size=max(50, images // 4), instance=instance)
    log(f"ingested {summary.embedded} images with {model} in {time.perf_counter() - started:.0f} s")
    return settings, summary.embedded


def demo_bundles(workdir: Path) -> dict:
    """`medvec demo`'s collection (its 36 synthetic images and the WG04 radiographs, medvec-demo-clip) bundled
    with the text tower as `auto` chooses it and as float32: the int8 file against the float32 one, and the
    whole bundle without thumbnails (mostly onnxruntime-web) for both."""
    from medvec.embedders.factory import embedder_config, open_embedder
    from medvec.search.configured import open_search

    settings, _ = build_collection(workdir / "demo", 36, model="medvec-demo-clip")
    search = open_search(settings)
    out = {}
    with open_embedder(embedder_config(settings, device="cpu")) as embedder:
        for text_precision in ("auto", "float32"):
            summary = build_bundle(search, embedder, workdir / "demo" / f"bundle-{text_precision}",
                                   home=settings.home, options=BundleOptions(text_precision=text_precision),
                                   progress=lambda m: None)
            out[text_precision] = {"images": summary["images"], "sizes": summary["sizes"],
                                   "text_precision": summary["checks"]["text_precision"]}
    search.close()
    check = out["auto"]["text_precision"]
    log(f"demo bundle: int8 text tower {check['int8_bytes']} B / float32 {check['float32_bytes']} B, "
        f"overlap {check['overlap']}, chosen {check['chosen']}")
    return out


def build_bundles(settings, workdir: Path) -> dict:
    from medvec.embedders.factory import embedder_config, open_embedder
    from medvec.search.configured import open_search

    search = open_search(settings)
    out = {}
    with open_embedder(embedder_config(settings, device="cpu")) as embedder:
        for precision in ("float16", "int8"):
            started = time.perf_counter()
            summary = build_bundle(search, embedder, workdir / f"bundle-{precision}", home=settings.home,
                                   options=BundleOptions(precision=precision), progress=lambda m: None)
            summary["build_seconds"] = round(time.perf_counter() - started, 2)
            out[precision] = summary
            log(f"{precision} bundle: {summary['sizes']['total'] / 1e6:.1f} MB in {summary['build_seconds']} s")
    search.close()
    return out


def sizes_per_1000(summary: dict) -> dict:
    sizes, images = summary["sizes"], summary["images"]
    growing = ("vectors", "index", "answers", "thumbs")
    per_1000 = {part: mb(sizes[part] * 1000 / images) for part in growing}
    once = {part: mb(sizes[part]) for part in ("runtime", "page", "text_model", "metrics")}
    return {"images": images, "per_1000_images_mb": per_1000,
            "per_1000_images_total_mb": round(sum(per_1000.values()), 3), "once_mb": once}


def vector_bytes(dim: int, precision: str) -> int:
    return dim * 2 if precision == "float16" else dim + 4


# --- a SigLIP-base-shaped text tower, to time a real-size model ----------------------------------------

def siglip_base_shaped_bundle(tiny_bundle: Path, workdir: Path) -> tuple[Path, Path, dict]:
    """Copies of the tiny bundle whose text tower has SigLIP base's shape (random weights), as float32 and as
    int8, and whose vectors are 768-d synthetic ones for the same rows, so the page runs a real-size model
    end to end. The int8 copy is checked as `medvec bundle` checks it (top-10 overlap with float32 on the
    fallback queries, over these vectors)."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from medvec.bundle.tokenizer_export import check_with_node
    from medvec.embedders.transformers_local import quiet_transformers

    target = workdir / "bundle-siglip-base-shape"
    shutil.copytree(tiny_bundle, target)
    manifest = json.loads((target / "bundle.json").read_text())
    config = SiglipConfig(
        text_config={"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 64},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8})
    started = time.perf_counter()
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = text_module(SiglipModel(config).eval())
    spec = json.loads((target / "model" / "tokenizer.json").read_text())
    example = [[spec["suffix_ids"][0]] * 64]
    info = export_text_tower(module, example, target / "model" / "text.onnx")
    export_seconds = time.perf_counter() - started
    rows = manifest["images"]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, 768)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    packed = pack_vectors(vectors, "float16")
    (target / "data" / "embeddings.bin").write_bytes(packed.data)
    manifest["vectors"] = packed.layout("data/embeddings.bin")
    manifest["text_model"].update(bytes=info["bytes"], precision="float32")
    manifest["model"]["dim"] = 768
    manifest["checks"].pop("text_precision", None)
    (target / "bundle.json").write_text(json.dumps(manifest, indent=1))
    log(f"SigLIP-base-shaped text tower: {info['bytes'] / 1e6:.0f} MB ONNX in {export_seconds:.0f} s")

    int8_target = workdir / "bundle-siglip-base-shape-int8"
    shutil.copytree(target, int8_target)
    queries = list(FALLBACK_QUERIES)
    token_ids = check_with_node(spec, queries, [[]] * len(queries))["js_ids"]  # the page's own tokenizer
    started = time.perf_counter()
    check = choose_text_precision(int8_target / "model" / "text.onnx", "int8", token_ids, queries, vectors)
    check["quantize_and_check_seconds"] = round(time.perf_counter() - started, 1)
    manifest["text_model"].update(bytes=check["int8_bytes"], precision="int8")
    manifest["checks"]["text_precision"] = check
    (int8_target / "bundle.json").write_text(json.dumps(manifest, indent=1))
    log(f"int8: {check['int8_bytes'] / 1e6:.0f} MB, top-10 overlap {check['overlap']} in "
        f"{check['quantize_and_check_seconds']} s")
    return target, int8_target, {"text_model_mb": mb(info["bytes"]), "export_seconds": round(export_seconds, 1),
                                 "int8": check}


# --- 2. the page in Chromium ----------------------------------------------------------------------------

@contextmanager
def static_server(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a browser that closes a tab mid-download resets its connections

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def answer_mark(page, count: int) -> float:
    page.wait_for_function(f"() => performance.getEntriesByName('medvec:answer').length >= {count}",
                           timeout=300_000)
    return page.evaluate(f"performance.getEntriesByName('medvec:answer')[{count - 1}].startTime")


def first_answers(browser, base_url: str, rounds: int) -> dict:
    """ms from navigation start to the first answer, for a fallback and for a novel query, each in a
    fresh context; then a warm novel query's in-page time."""
    results = {"fallback_ms": [], "novel_ms": [], "warm_novel_ms": [], "warm_novel_parts": []}
    for _ in range(rounds):
        for kind, text in (("fallback", FALLBACK_QUERY), ("novel", NOVEL_QUERIES[0])):
            context = browser.new_context()
            page = context.new_page()
            page.goto(base_url + "/")
            page.wait_for_selector("#q:not([disabled])")
            page.fill("#q", text)
            page.click("#search-button")
            results[f"{kind}_ms"].append(round(answer_mark(page, 1), 1))
            if kind == "novel":
                page.fill("#q", NOVEL_QUERIES[1])
                page.click("#search-button")
                answer_mark(page, 2)
                summary = page.inner_text("#summary")
                parts = summary.split(" · ")
                results["warm_novel_ms"].append(float(parts[-1].split(" ms")[0]))
                results["warm_novel_parts"].append(" · ".join(p for p in parts if p.startswith(("tokenise", "encode",
                                                                                                  "scan"))))
            context.close()
    for key in ("fallback_ms", "novel_ms", "warm_novel_ms"):
        values = results[key]
        results[key] = {"median": round(statistics.median(values), 1), "best": min(values), "rounds": values}
    return results


TOPK_SCRIPT = """async ({rows, dim, precision, rounds}) => {
    const { PackedVectors, topK } = await import('./search.js');
    const values = rows * dim;
    const buffer = new ArrayBuffer(precision === 'int8' ? values + rows * 4 : values * 2);
    let seed = 12345;
    const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296;
    if (precision === 'int8') {
        const codes = new Int8Array(buffer, 0, values);
        for (let i = 0; i < values; i++) codes[i] = Math.floor(random() * 255) - 127;
        const scales = new Float32Array(buffer, values, rows);
        for (let i = 0; i < rows; i++) scales[i] = 0.001 + random() * 0.001;
    } else {
        const bits = new Uint16Array(buffer, 0, values);
        // Finite halves of magnitude ~0.001 to 0.2 with random signs, like unit vectors' components.
        for (let i = 0; i < values; i++) {
            bits[i] = (0x1400 + Math.floor(random() * 0x1a00)) | (random() < 0.5 ? 0x8000 : 0);
        }
    }
    const layout = { rows, dim, precision, codes_offset: 0, scales_offset: precision === 'int8' ? values : null };
    const vectors = new PackedVectors(buffer, layout);
    const query = new Float32Array(dim);
    const times = [];
    const out = new Float32Array(rows);
    for (let round = 0; round < rounds; round++) {
        for (let j = 0; j < dim; j++) query[j] = random() - 0.5;
        const started = performance.now();
        topK(vectors.scores(query, out), 10);
        times.push(performance.now() - started);
    }
    return times;
}"""


def topk_in_browser(browser, base_url: str, rows: int, dims: list[int], rounds: int) -> dict:
    results = {}
    for dim in dims:
        for precision in ("float16", "int8"):
            context = browser.new_context()
            page = context.new_page()
            page.goto(base_url + "/")
            times = page.evaluate(TOPK_SCRIPT, {"rows": rows, "dim": dim, "precision": precision,
                                                "rounds": rounds + 2})
            context.close()
            kept = times[1:]  # the first round also compiles the loop
            results[f"{dim}/{precision}"] = {"rows": rows, "dim": dim, "precision": precision,
                                             "best_ms": round(min(kept), 1),
                                             "median_ms": round(statistics.median(kept), 1),
                                             "rounds_ms": [round(t, 1) for t in times],
                                             "packed_mb": mb(rows * vector_bytes(dim, precision))}
            log(f"top-10 over {rows} x {dim} {precision}: best {min(kept):.0f} ms")
    return results


# --- 4. packing recall at scale ---------------------------------------------------------------------------

def packing_recall_at_scale(rows: int, dim: int, queries: int) -> dict:
    from search import Collection  # benchmarks/search.py: the clustered synthetic collection

    started = time.perf_counter()
    col = Collection(rows, dim, seed=0)
    query_vectors, kinds = col.queries(queries, seed=7)
    log(f"synthetic collection {rows} x {dim} in {time.perf_counter() - started:.0f} s")
    exact_rows = _top(col.vectors, query_vectors)[0]
    out = {"rows": rows, "dim": dim, "queries": queries, "stats": col.stats()}
    for precision in ("float16", "int8"):
        approx_vectors = unpack_vectors(pack_vectors(col.vectors, precision))
        approx_rows, error = _top(approx_vectors, query_vectors, col.vectors)
        found = np.array([len(set(a) & set(e)) / 10 for a, e in zip(approx_rows, exact_rows)])
        out[precision] = {"recall@10": round(float(found.mean()), 4), "max_score_error": round(error, 6),
                          "by_kind": {name: round(float(found[kinds == k].mean()), 4) for k, name in
                                      enumerate(("noisy stored row", "unseen image", "between clusters"))}}
        del approx_vectors
        log(f"{precision}: recall@10 {out[precision]['recall@10']}")
    return out


def _top(vectors, queries, exact_vectors=None, chunk: int = 50):
    rows, worst = [], 0.0
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ vectors.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        rows.extend(top.tolist())
        if exact_vectors is not None:
            true = queries[start:start + chunk] @ exact_vectors.T
            worst = max(worst, float(np.abs(true - scores).max()))
    return (rows, worst) if exact_vectors is not None else (rows,)


# --- report ---------------------------------------------------------------------------------------------

def render(res: dict) -> str:
    lines = ["## Search in the browser (issue 9)", "",
             f"- command: `{res['command']}`", f"- date: {res['date']}",
             f"- machine: {res['machine']}", f"- browser: {res['browser']}", ""]
    size = res["sizes"]
    lines += ["### Bundle size", "",
              f"{size['float16']['images']} sample images (synthetic chest radiographs, 256 px WebP thumbnails), "
              "tiny-siglip (64-d). Parts that grow with the collection, per 1,000 images:", "",
              "| part | float16 MB | int8 MB |", "|---|---:|---:|"]
    for part in ("vectors", "index", "answers", "thumbs"):
        lines.append(f"| {part} | {size['float16']['per_1000_images_mb'][part]} | "
                     f"{size['int8']['per_1000_images_mb'][part]} |")
    lines.append(f"| **total per 1,000 images** | **{size['float16']['per_1000_images_total_mb']}** | "
                 f"**{size['int8']['per_1000_images_total_mb']}** |")
    once = size["float16"]["once_mb"]
    lines += ["", f"Paid once: onnxruntime-web {once['runtime']} MB, the page {once['page']} MB, the text model "
              f"{once['text_model']} MB for tiny-siglip, {res['siglip_base_shape']['text_model_mb']} MB for a "
              "SigLIP-base-sized text tower (float32 ONNX).", "",
              "Vectors per 1,000 images at real models' widths:", "",
              "| width | float16 MB | int8 MB |", "|---:|---:|---:|"]
    for dim in (64, 768, 1152):
        lines.append(f"| {dim} | {mb(1000 * vector_bytes(dim, 'float16'))} | {mb(1000 * vector_bytes(dim, 'int8'))} |")
    lines += ["", "### Text tower: int8 (dynamic quantisation) against float32", "",
              "Top-10 overlap: each fallback query's top 10 images under the int8 graph against its top 10 under "
              "float32 (the build's check; auto keeps int8 at >= 0.95).", "",
              "| text tower | float32 MB | int8 MB | int8 / float32 | top-10 overlap (min) | same top 1 | "
              "lowest cosine | auto keeps |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, key in ((f"tiny-siglip (the tests' model), {size['float16']['images']}-image sample", "tiny_siglip"),
                      ("SigLIP-base-sized (random weights), 768-d synthetic vectors", "siglip_base_shape")):
        c = res["text_precision"][key]
        lines.append(f"| {name} | {mb(c['float32_bytes'])} | {mb(c['int8_bytes'])} | "
                     f"{c['int8_bytes'] / c['float32_bytes']:.3f} | {c['overlap']} ({c['min_overlap']}) | "
                     f"{c['same_top1']} | {c['min_cosine']} | {'int8' if c['passed'] else 'float32'} |")
    lines += ["", "### Time to first answer (headless Chromium, ms since navigation start)", "",
              "| bundle | fallback query | novel query (cold: runtime + model load) | novel query (warm) |",
              "|---|---:|---:|---:|"]
    for name, key in (("tiny-siglip (int8 text tower)", "tiny_siglip"),
                      ("SigLIP-base-sized text tower, float32", "siglip_base_shape"),
                      ("SigLIP-base-sized text tower, int8", "siglip_base_shape_int8")):
        t = res["first_answer"][key]
        lines.append(f"| {name} | {t['fallback_ms']['median']} (best {t['fallback_ms']['best']}) | "
                     f"{t['novel_ms']['median']} (best {t['novel_ms']['best']}) | {t['warm_novel_ms']['median']} "
                     f"({t['warm_novel_parts'][-1]}) |")
    lines += ["", f"### Top-10 over {res['rows']:,} packed vectors in the browser (search.js, one thread)", "",
              "| width | precision | packed MB | best ms | median ms |", "|---:|---|---:|---:|---:|"]
    for r in res["topk"].values():
        lines.append(f"| {r['dim']} | {r['precision']} | {r['packed_mb']:.0f} | {r['best_ms']} | {r['median_ms']} |")
    if res.get("recall"):
        rec = res["recall"]
        lines += ["", f"### Packing cost at scale: recall@10 against float32 ({rec['rows']:,} x {rec['dim']}, "
                  f"{rec['queries']} queries)", "",
                  "| precision | recall@10 | noisy stored row | unseen image | between clusters | max score error |",
                  "|---|---:|---:|---:|---:|---:|"]
        for precision in ("float16", "int8"):
            r = rec[precision]
            kinds = r["by_kind"]
            lines.append(f"| {precision} | {r['recall@10']} | {kinds['noisy stored row']} | {kinds['unseen image']} | "
                         f"{kinds['between clusters']} | {r['max_score_error']} |")
    return "\n".join(lines + render_demo(res)) + "\n"


def render_demo(res: dict) -> list[str]:
    demo = res["demo"]
    check, images = demo["auto"]["text_precision"], demo["auto"]["images"]
    without = {key: part["sizes"]["total"] - part["sizes"]["thumbs"] for key, part in demo.items()}
    lines = ["", f"### The demo collection's text tower (medvec-demo-clip, `medvec demo`'s {images} images)", "",
             "The ratio is the text tower's file (`model/text.onnx`), int8 against float32, both compacted as the "
             "build writes them; the bundle without thumbnails is mostly onnxruntime-web's 14.3 MB.", "",
             "| float32 bytes | int8 bytes | int8 / float32 | top-10 overlap (lowest query) | same top 1 | "
             "lowest cosine | auto keeps | bundle without thumbnails, float32 → int8 |",
             "|---:|---:|---:|---:|---:|---:|---|---|",
             f"| {check['float32_bytes']:,} | {check['int8_bytes']:,} | "
             f"{check['int8_bytes'] / check['float32_bytes']:.3f} | {check['overlap']} ({check['min_overlap']}) | "
             f"{check['same_top1']} | {check['min_cosine']} | {check['chosen']} | "
             f"{mb(without['float32'])} → {mb(without['auto'])} MB |"]
    answers = res.get("first_answer", {}).get("demo_int8")
    if answers:
        lines += ["", f"In Chromium (onnxruntime-web) the demo's int8 bundle answers a fallback query at "
                  f"{answers['fallback_ms']['median']} ms, a novel one cold at {answers['novel_ms']['median']} ms "
                  f"and warm in {answers['warm_novel_ms']['median']} ms ({answers['warm_novel_parts'][-1]})."]
    return lines


def demo_only(res: dict, rounds: int) -> str:
    """--demo-only: the demo collection's bundles and the int8 one's answers in Chromium."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="medvec-bundle-bench-") as tmp:
        res["demo"] = demo_bundles(Path(tmp))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            res["browser"] = f"Chromium {browser.version} (headless)"
            with static_server(Path(tmp) / "demo" / "bundle-auto") as base_url:
                res["first_answer"] = {"demo_int8": first_answers(browser, base_url, rounds)}
            browser.close()
    return "\n".join([f"- command: `{res['command']}`", f"- date: {res['date']}", f"- machine: {res['machine']}",
                      f"- browser: {res['browser']}", *render_demo(res)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="sample images to ingest and bundle")
    parser.add_argument("--rows", type=int, default=377_000, help="packed vectors for the browser top-k")
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 1152])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="200 images, 50,000 rows, 768-d only, 1 round")
    parser.add_argument("--demo-only", action="store_true",
                        help="only the demo collection's text tower (int8 against float32) and its page in Chromium")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rows, args.dims, args.rounds, args.recall_queries = 200, 50_000, [768], 1, 100
    from playwright.sync_api import sync_playwright

    command = [".venv/bin/python", "benchmarks/bundle.py", *(sys.argv[1:] if argv is None else argv)]
    res = {"command": " ".join(shlex.quote(a) for a in command),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": args.rows,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}, "
                      f"load average at start {[round(x, 2) for x in os.getloadavg()]}"}
    if args.demo_only:
        report = demo_only(res, args.rounds)
        return _write(report, res, args.out)
    with tempfile.TemporaryDirectory(prefix="medvec-bundle-bench-") as tmp:
        workdir = Path(tmp)
        res["demo"] = demo_bundles(workdir)
        settings, images = build_collection(workdir, args.images)
        bundles = build_bundles(settings, workdir)
        res["sizes"] = {precision: sizes_per_1000(summary) for precision, summary in bundles.items()}
        res["build_seconds"] = {precision: summary["build_seconds"] for precision, summary in bundles.items()}
        base_shape, base_int8, res["siglip_base_shape"] = siglip_base_shaped_bundle(workdir / "bundle-float16",
                                                                                     workdir)
        res["text_precision"] = {"tiny_siglip": bundles["float16"]["checks"]["text_precision"],
                                 "siglip_base_shape": res["siglip_base_shape"]["int8"]}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            res["browser"] = f"Chromium {browser.version} (headless)"
            res["first_answer"] = {}
            for key, folder in (("tiny_siglip", workdir / "bundle-float16"), ("siglip_base_shape", base_shape),
                                ("siglip_base_shape_int8", base_int8), ("demo_int8", workdir / "demo" / "bundle-auto")):
                with static_server(folder) as base_url:
                    res["first_answer"][key] = first_answers(browser, base_url, args.rounds)
                log(f"first answers, {key}: {res['first_answer'][key]['fallback_ms']['median']} / "
                    f"{res['first_answer'][key]['novel_ms']['median']} ms")
            with static_server(workdir / "bundle-float16") as base_url:
                res["topk"] = topk_in_browser(browser, base_url, args.rows, args.dims, args.rounds)
            browser.close()
    res["recall"] = packing_recall_at_scale(args.rows, 768, args.recall_queries)
    res["machine"] += f", at end {[round(x, 2) for x in os.getloadavg()]}"
    return _write(render(res), res, args.out)


def _write(report: str, res: dict, out: Path | None) -> int:
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
