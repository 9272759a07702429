"""Build a search bundle: one static folder that answers searches in the visitor's browser, no server.

    bundle.json                 manifest (schema medvec.bundle/1): model, files, layout, build checks
    index.html app.js worker.js search.js tokenizer.js style.css favicon.svg   the page (medvec/bundle/web)
    core/                       the CSS and JS it shares with `medvec serve`'s page (medvec/web/core)
    vendor/                     onnxruntime-web's WebAssembly build and its licence
    model/text.onnx             the text tower; model/tokenizer.json its tokenizer (medvec.tokenizer/1)
    data/embeddings.bin         image embeddings, packed (float16, or int8 + scales), little-endian
    data/index.json             row → image id and a few metadata columns
    data/fallbacks.json         the common queries' precomputed top k, with those images' metadata
    data/similar.bin            every image's nearest neighbours (uint32 rows, then float32 scores)
    data/metrics.json           the model's latest retrieval evaluation, when there is one
    thumbs/<row // 1000>/<row>.webp

Everything comes from what the search assets already hold for one table version (the model's table,
`fallback_queries`, `similar_images`), so the page answers exactly as the Python search path does. The
folder is written beside the target and moved into place whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medvec.bundle.export_onnx import check_text_onnx, cpu_float32_text_tower, export_text_tower
from medvec.bundle.pack import PRECISIONS, pack_vectors, packing_costs
from medvec.bundle.runtime import ORT_FILES, copy_ort, ort_version
from medvec.bundle.tokenizer_export import WEB_DIR, check_with_node, export_tokenizer, python_token_ids
from medvec.evaluation.retrieval import FINDING_PROMPTS
from medvec.home import EVAL_FILES
from medvec.search.precompute import FALLBACK_QUERIES
from medvec.search.images import ImageSearch
from medvec.storage import HomePath, S3Path, as_path, is_remote, map_paths, remove_tree, upload_tree

log = logging.getLogger(__name__)

SCHEMA = "medvec.bundle/1"
PAGE_FILES = ("index.html", "app.js", "worker.js", "search.js", "tokenizer.js", "style.css", "favicon.svg")
#: The CSS and JS the bundle's page shares with `medvec serve`'s page, copied into the bundle's `core/`.
WEB_CORE_DIR = Path(__file__).resolve().parents[1] / "web" / "core"
#: Metadata a page needs to show and filter a hit. Subject and study keys, batch and source paths stay
#: out: a public page has no use for them.
INDEX_COLUMNS = ("view_position", "modality", "body_part", "labels", "split", "width", "height")
THUMBS_PER_FOLDER = 1000
#: Texts the ONNX export and the browser tokenizer are checked on, besides the common queries and the
#: evaluation prompts: capitals, punctuation, spacing, non-ASCII, and one longer than 64 tokens.
EXTRA_PROMPTS = (
    "Pleural effusion.", "LEFT lower lobe, consolidation;  ", "  no   acute  cardiopulmonary process  ",
    "x-ray: 'heart' is (mildly) enlarged!", "rib #4 fracture?", "épanchement pleural",
    "ｘ－ｒａｙ ｃｈｅｓｔ",
    "tube\tand\nline", "an opacity that is in no fallback list",
    "heart size is " + "normal and " * 40 + "stable",
)


class BundleError(RuntimeError):
    """The bundle cannot be built from what the home holds; says what to materialise or install."""


@dataclass(frozen=True)
class BundleOptions:
    # How data/embeddings.bin holds the vectors. float16 keeps the Python path's ranking (recall@10 1.0 on
    # every set measured); int8 halves the bytes and costs recall where scores crowd (medvec/bundle/pack.py).
    precision: str = "float16"
    thumbnails: bool = True
    node: str | None = None  # node binary for the tokenizer check (default: PATH)
    ort_dist: Path | None = None  # onnxruntime-web's dist folder (default: web/node_modules)


def ort_dist_dir(explicit: Path | None = None) -> Path:
    """Where onnxruntime-web's built files are; raises with the command that installs them."""
    from medvec.settings import get_settings

    folder = Path(explicit or get_settings().ort_web_dist
                  or WEB_DIR / "node_modules" / "onnxruntime-web" / "dist")
    missing = [name for name in ORT_FILES if not (folder / name).exists()]
    if missing:
        raise BundleError(f"onnxruntime-web is not installed ({folder} lacks {', '.join(missing)}): run "
                          f"`make web-deps` (npm ci in {WEB_DIR}), or set MEDVEC_ORT_WEB_DIST to its dist folder")
    return folder


def _require_onnx() -> None:
    """torch's exporter writes through the onnx package; the export is checked with onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BundleError(f"building a bundle needs {exc.name}: install the bundle extra "
                          "(pip install -e '.[bundle]')") from None


def latest_evaluation(home: str | HomePath) -> tuple[dict | None, HomePath | None]:
    """The report and plot `medvec eval` / `retrieval_evaluation` last wrote, if any."""
    try:
        report = json.loads((as_path(home) / EVAL_FILES["json"]).read_text())
    except (OSError, ValueError):
        return None, None
    plot = as_path(home) / EVAL_FILES["png"]
    return report, plot if plot.exists() else None


def check_prompts() -> list[str]:
    seen, prompts = set(), []
    for text in (*FALLBACK_QUERIES, *(p for ps in FINDING_PROMPTS.values() for p in ps), *EXTRA_PROMPTS):
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def build_bundle(search: ImageSearch, embedder, out_dir: str | HomePath, *, home: str | HomePath,
                 eval_report: dict | None = None, eval_plot: HomePath | None = None,
                 options: BundleOptions = BundleOptions(), progress: Callable[[str], None] = log.info) -> dict:
    """Write the bundle for `search`'s table to `out_dir` (replaced whole) and return its summary.

    `embedder` is the model's local transformers embedder (its text tower is exported); `eval_report`
    the `medvec eval` report (`$MEDVEC_HOME/eval/report.json`), whose section for this table becomes the
    metrics tab. An `s3://` `out_dir` (a bucket served as a static site) is built locally, then uploaded.
    """
    if is_remote(out_dir):
        return _build_and_upload(search, embedder, as_path(out_dir), home=home, eval_report=eval_report,
                                 eval_plot=eval_plot, options=options, progress=progress)
    started = time.perf_counter()
    loaded, ort_dist = _checked_inputs(search, embedder, options)
    out_dir = Path(out_dir).absolute()
    _check_target(out_dir)
    spec = embedder.spec
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in ("vendor", "model", "data", "thumbs"):
        (tmp / folder).mkdir(parents=True)
    try:
        _copy_page(tmp)
        copy_ort(ort_dist, tmp / "vendor")
        text_model, text_checks = _write_text_model(tmp, embedder, options, progress)
        data = _write_data(tmp, search, loaded, home, eval_report, eval_plot, options, progress)
        manifest = {
            "schema": SCHEMA,
            "model": {"name": spec.name, "model_id": spec.model_id, "revision": getattr(embedder, "revision", None),
                      "dim": int(loaded.index.vectors.shape[1]),
                      "text_length": spec.text_length, "no_retrieval_quality": spec.no_retrieval_quality,
                      "licence": spec.licence},
            "table": search.table_name, "table_version": loaded.version, "images": len(loaded.ids),
            "text_model": text_model, **data.pop("manifest"),
            "runtime": {"onnxruntime_web": ort_version(ort_dist), "files": "vendor/"},
            "checks": {**text_checks, "packing": data["packing"]},
        }
        manifest["sizes"] = _sizes(tmp)
        _write_json(tmp / "bundle.json", manifest, indent=1)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"out_dir": str(out_dir), "model": spec.name, "table": search.table_name,
               "table_version": loaded.version, "images": len(loaded.ids), "precision": options.precision,
               "sizes": manifest["sizes"], "checks": manifest["checks"],
               "seconds": round(time.perf_counter() - started, 2)}
    progress(f"bundle for {spec.name} ({len(loaded.ids)} images, {manifest['sizes']['total'] / 1e6:.1f} MB) "
             f"in {out_dir}")
    return summary


def _checked_inputs(search: ImageSearch, embedder, options: BundleOptions):
    """The search's loaded table (with its stored answers) and onnxruntime-web's folder, or a BundleError."""
    if options.precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {', '.join(PRECISIONS)}, not {options.precision!r}")
    if not all(hasattr(embedder, part) for part in ("spec", "model", "tokenizer")):
        raise BundleError(f"{getattr(embedder, 'name', 'this model')} is not a local transformers model (a NIM?): the "
                          "bundle exports the text tower of a model that runs here")
    _require_onnx()
    ort_dist = ort_dist_dir(options.ort_dist)
    loaded = _loaded_with_answers(search)
    spec = embedder.spec
    if loaded.index.vectors.shape[1] != embedder.dim:
        raise BundleError(f"{search.table_name} holds {loaded.index.vectors.shape[1]}-d vectors but {spec.name} embeds "
                          f"text as {embedder.dim}-d: bundle the table with the model that embedded it")
    return loaded, ort_dist


def _copy_page(tmp: Path) -> None:
    """The bundle's page, and the web core it shares with `medvec serve`'s page (in `core/`)."""
    for name in PAGE_FILES:
        shutil.copyfile(WEB_DIR / name, tmp / name)
    shutil.copytree(WEB_CORE_DIR, tmp / "core", ignore=shutil.ignore_patterns(".*"))


def _write_text_model(tmp: Path, embedder, options: BundleOptions, progress) -> tuple[dict, dict]:
    """The tokenizer and the ONNX text tower, each checked against the model; their manifest entry and checks."""
    spec = embedder.spec
    # The tokenizer first: it is the cheap step that refuses models the page cannot serve.
    prompts = check_prompts()
    token_ids = python_token_ids(embedder.tokenizer, prompts, spec.text_length)
    tokenizer = export_tokenizer(embedder.tokenizer, spec.text_length)
    _write_json(tmp / "model" / "tokenizer.json", tokenizer)
    node_check = check_with_node(tokenizer, prompts, token_ids, node=options.node)
    node_check.pop("js_ids", None)
    if node_check.get("checked") and node_check["matching"] != node_check["prompts"]:
        raise BundleError(f"the page's tokenizer disagrees with {spec.name}'s on "
                          f"{node_check['prompts'] - node_check['matching']} prompt(s), e.g. "
                          f"{node_check['mismatches'][:3]}; the bundle would search for other words")

    progress(f"exporting the {spec.name} text tower to ONNX")
    module = cpu_float32_text_tower(embedder)
    onnx_info = export_text_tower(module, token_ids, tmp / "model" / "text.onnx")
    onnx_check = check_text_onnx(module, tmp / "model" / "text.onnx", token_ids, prompts)
    entry = {**onnx_info, "file": "model/text.onnx", "tokenizer": "model/tokenizer.json",
             "tokenizer_model": tokenizer["model"]}
    return entry, {"onnx": onnx_check, "tokenizer": node_check}


def _write_data(tmp: Path, search: ImageSearch, loaded, home, eval_report, eval_plot, options: BundleOptions,
                progress) -> dict:
    """Vectors, index, stored answers, thumbnails and metrics under data/ and thumbs/; their manifest entries."""
    progress(f"packing {len(loaded.ids)} vectors as {options.precision}")
    vectors = loaded.index.vectors
    packed = pack_vectors(vectors, options.precision)
    (tmp / "data" / "embeddings.bin").write_bytes(packed.data)
    packing = packing_costs(vectors, np.asarray(list(loaded.fallback_vectors.values()), np.float32),
                             options.precision)
    progress("writing the index, the stored answers and the thumbnails")
    thumbs = _copy_thumbnails(loaded, as_path(home), tmp / "thumbs") if options.thumbnails else np.zeros(
        len(loaded.ids), bool)
    _write_json(tmp / "data" / "index.json", _index(loaded, thumbs))
    _write_json(tmp / "data" / "fallbacks.json", _fallbacks(loaded, thumbs))
    similar_k = _write_similar(loaded, tmp / "data" / "similar.bin")
    metrics = _metrics(eval_report, search.table_name, loaded.version)
    if metrics is not None:
        _write_json(tmp / "data" / "metrics.json", metrics)
        if eval_plot is not None and eval_plot.exists():
            (tmp / "data" / "recall_at_k.png").write_bytes(eval_plot.read_bytes())
    manifest = {
        "vectors": packed.layout("data/embeddings.bin"),
        "index": "data/index.json", "fallbacks": "data/fallbacks.json",
        "similar": {"file": "data/similar.bin", "k": similar_k, "rows": len(loaded.ids),
                    "scores_offset": len(loaded.ids) * similar_k * 4},
        "metrics": "data/metrics.json" if metrics is not None else None,
        "metrics_plot": "data/recall_at_k.png" if (tmp / "data" / "recall_at_k.png").exists() else None,
        "thumbs": {"pattern": "thumbs/{folder}/{row}.webp", "per_folder": THUMBS_PER_FOLDER,
                   "count": int(thumbs.sum())},
    }
    return {"manifest": manifest, "packing": packing}


# --- inputs ------------------------------------------------------------------------------------------

def _build_and_upload(search, embedder, target: S3Path, **kwargs) -> dict:
    if not target.key:
        raise BundleError(f"{target} is a whole bucket: give a prefix for the bundle, e.g. {target}/cxr")
    _check_target(target)  # before building, and never replacing what is not a bundle
    with tempfile.TemporaryDirectory(prefix="medvec-bundle-") as local:
        summary = build_bundle(search, embedder, Path(local) / "bundle", **kwargs)
        kwargs["progress"](f"uploading the bundle to {target}")
        remove_tree(target)  # replaced whole, as a local bundle is
        upload_tree(Path(local) / "bundle", target)
    return summary | {"out_dir": str(target)}


def _check_target(out_dir: HomePath) -> None:
    """Never replace a folder that is not a bundle: OUT_DIR is removed whole when rebuilt."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) \
            and not (out_dir / "bundle.json").exists():
        raise BundleError(f"{out_dir} exists and is not a Medvec bundle (no bundle.json): choose an empty or new "
                          "folder; a bundle folder is replaced whole on every build")


def _loaded_with_answers(search: ImageSearch):
    search.refresh()
    loaded = search.snapshot()
    if not loaded.ids:
        raise BundleError(f"{search.table_name} is empty: ingest images first")
    if not loaded.fallback_hits:
        raise BundleError(f"no fallback answers for {search.table_name} v{loaded.version}: materialise "
                          "fallback_queries (or run `medvec ingest`), then build the bundle")
    if len(loaded.similar) != len(loaded.ids):
        raise BundleError(f"no find-similar lists for {search.table_name} v{loaded.version}: materialise "
                          "similar_images (or run `medvec ingest`), then build the bundle")
    return loaded


# --- outputs -----------------------------------------------------------------------------------------

def _write_json(path: Path, data, indent: int | None = None) -> None:
    separators = None if indent else (",", ":")
    path.write_text(json.dumps(data, ensure_ascii=False, indent=indent, separators=separators))


def _copy_thumbnails(loaded, home: HomePath, folder: Path) -> np.ndarray:
    present = np.zeros(len(loaded.ids), bool)
    uris = loaded.meta.column("thumb_uri").to_pylist() if "thumb_uri" in loaded.meta.schema.names else []

    def read(path):
        try:
            return path.read_bytes() if path is not None else None
        except FileNotFoundError:
            return None

    sources = [home / uri if uri else None for uri in uris]
    for start in range(0, len(sources), 1024):  # a home on S3: pools of GETs, a chunk in memory at a time
        for row, data in enumerate(map_paths(read, sources[start:start + 1024]), start):
            if data is None:
                continue
            target = folder / str(row // THUMBS_PER_FOLDER) / f"{row}.webp"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
            present[row] = True
    if not present.all():
        log.warning("%d of %d thumbnails are missing under %s", int((~present).sum()), len(present), home)
    return present


def _index(loaded, thumbs: np.ndarray) -> dict:
    meta = loaded.meta
    columns = {name: meta.column(name).to_pylist() if name in meta.schema.names else [None] * len(loaded.ids)
               for name in INDEX_COLUMNS}
    return {"rows": len(loaded.ids), "ids": list(loaded.ids), **columns, "thumb": [int(t) for t in thumbs]}


def _fallbacks(loaded, thumbs: np.ndarray) -> dict:
    """The common queries' stored top k, with the metadata of every image they show: the page answers
    them before the full index (which grows with the collection) has loaded."""
    queries = []
    for key, hits in loaded.fallback_hits.items():
        queries.append({"key": key, "rows": [loaded.row_of[image_id] for image_id, _ in hits],
                        "scores": [round(float(score), 6) for _, score in hits]})
    shown = sorted({row for query in queries for row in query["rows"]})
    meta = loaded.meta.take(shown).to_pylist() if shown else []
    images = {str(row): {"id": loaded.ids[row], **{name: record.get(name) for name in INDEX_COLUMNS},
                         "thumb": int(thumbs[row])} for row, record in zip(shown, meta)}
    return {"k": max((len(q["rows"]) for q in queries), default=0), "queries": queries, "images": images}


def _write_similar(loaded, path: Path) -> int:
    """n x k uint32 neighbour rows (0xFFFFFFFF where a list is shorter), then n x k float32 scores."""
    k = max((len(v) for v in loaded.similar.values()), default=0)
    rows = np.full((len(loaded.ids), k), 0xFFFFFFFF, dtype="<u4")
    scores = np.zeros((len(loaded.ids), k), dtype="<f4")
    for image_id, neighbours in loaded.similar.items():
        row = loaded.row_of.get(image_id)
        if row is None:
            continue
        for j, (other, score) in enumerate(neighbours):
            rows[row, j] = loaded.row_of[other]
            scores[row, j] = score
    path.write_bytes(rows.tobytes() + scores.tobytes())
    return k


def _metrics(report: dict | None, table: str, version: int) -> dict | None:
    if not report:
        return None
    section = next((m for m in report.get("models", []) if m.get("table") == table and "error" not in m), None)
    if section is None:
        return None
    return {"schema": report.get("schema"), "split": report.get("split"), "ks": report.get("ks"),
            "uncertain_policy": report.get("uncertain_policy"), "findings": report.get("findings"),
            "bundle_table_version": version, "model": section}


def _sizes(folder: Path) -> dict:
    sizes = {"total": 0, "page": 0, "runtime": 0, "text_model": 0, "vectors": 0, "index": 0, "answers": 0,
             "metrics": 0, "thumbs": 0}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        sizes["total"] += size
        part = ("runtime" if relative.startswith("vendor/") else "text_model" if relative.startswith("model/")
                else "thumbs" if relative.startswith("thumbs/") else "vectors" if relative == "data/embeddings.bin"
                else "index" if relative == "data/index.json"
                else "answers" if relative in ("data/fallbacks.json", "data/similar.bin")
                else "metrics" if relative.startswith("data/") else "page")
        sizes[part] += size
    return sizes


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
