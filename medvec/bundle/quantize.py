"""The text tower in int8: dynamic quantisation of the exported ONNX graph, kept only when it ranks images
like float32 does.

`onnxruntime.quantization.quantize_dynamic` stores the MatMul and Gather (token embedding) weights as int8
with one scale each and quantises activations at run time (DynamicQuantizeLinear + MatMulInteger, which
onnxruntime-web's WebAssembly build runs): about a quarter of the float32 bytes. Whether the page still
finds the same images is measured, not assumed: the collection's fallback queries are encoded by both
graphs and each one's top 10 over the collection's own image vectors compared (`text_image_overlap`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from medvec.bundle.compact_onnx import compact_onnx
from medvec.bundle.export_onnx import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

TEXT_PRECISIONS = ("auto", "int8", "float32")
#: Mean top-10 overlap with float32 that int8 must reach on the fallback queries to be kept by `auto`.
MIN_OVERLAP = 0.95
TOP_K = 10


def quantize_text_tower(source: Path, target: Path) -> int:
    """Write `source`'s int8 (dynamic) quantisation to `target`; returns its size in bytes.

    Signed int8 weights (QInt8): the activations are uint8 (DynamicQuantizeLinear), and MatMulInteger with
    uint8 x int8 is what both onnxruntime's CPU kernels and its WebAssembly build implement.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a hint to run its pre-processing on the root logger on every call; the graph is
    # already constant-folded by the exporter, and the overlap check measures what the hint is about.
    hint = _DropHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=False)
    finally:
        logging.getLogger().removeFilter(hint)
    # The quantiser writes back long names, every intermediate shape and one zero point per weight: 42% of
    # the demo model's int8 file (medvec/bundle/compact_onnx.py).
    return compact_onnx(target)


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _embed(path: Path, token_ids: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: token_ids[start:start + batch]})[0]
                           for start in range(0, len(token_ids), batch)])


def text_image_overlap(float_path: Path, int8_path: Path, token_ids: Sequence[Sequence[int]], texts: Sequence[str],
                       image_vectors: np.ndarray, *, k: int = TOP_K) -> dict:
    """Mean and lowest overlap of each text's top-k images under the int8 graph with its top-k under float32,
    and the lowest cosine between the two graphs' text vectors."""
    ids = np.asarray(token_ids, dtype=np.int64)
    exact, approx = _embed(float_path, ids), _embed(int8_path, ids)
    images = np.asarray(image_vectors, dtype=np.float32)
    k = max(1, min(k, len(images)))
    exact_top = np.argsort(-(exact @ images.T), axis=1, kind="stable")[:, :k]
    approx_top = np.argsort(-(approx @ images.T), axis=1, kind="stable")[:, :k]
    overlaps = np.array([len(set(a) & set(e)) / k for a, e in zip(approx_top.tolist(), exact_top.tolist())])
    cosines = (exact * approx).sum(axis=1) / np.maximum(
        np.linalg.norm(exact, axis=1) * np.linalg.norm(approx, axis=1), 1e-12)
    worst = int(np.argmin(overlaps))
    return {"queries": len(texts), "k": k, "overlap": round(float(overlaps.mean()), 4),
            "min_overlap": round(float(overlaps.min()), 4), "worst_query": texts[worst],
            "same_top1": round(float(np.mean(exact_top[:, 0] == approx_top[:, 0])), 4),
            "min_cosine": round(float(cosines.min()), 6)}


def choose_text_precision(model_path: Path, requested: str, token_ids: Sequence[Sequence[int]],
                          texts: Sequence[str], image_vectors: np.ndarray, *,
                          min_overlap: float = MIN_OVERLAP) -> dict:
    """Quantise the float32 graph at `model_path` unless `requested` is float32, measure it, and leave at
    `model_path` the graph the bundle ships: int8 when requested, or (auto) when its overlap passes.

    Returns the check for the manifest: requested, chosen, both sizes, the overlap and why.
    """
    if requested not in TEXT_PRECISIONS:
        raise ValueError(f"text precision must be one of {', '.join(TEXT_PRECISIONS)}, not {requested!r}")
    model_path = Path(model_path)
    float32_bytes = model_path.stat().st_size
    check = {"requested": requested, "chosen": "float32", "float32_bytes": float32_bytes, "threshold": min_overlap}
    if requested == "float32":
        return check | {"reason": "float32 requested"}
    with tempfile.TemporaryDirectory(prefix="medvec-int8-", dir=model_path.parent) as scratch:
        int8_path = Path(scratch) / "text.int8.onnx"
        check["int8_bytes"] = quantize_text_tower(model_path, int8_path)
        measured = text_image_overlap(model_path, int8_path, token_ids, texts, image_vectors)
        check.update(measured, passed=measured["overlap"] >= min_overlap)
        if check["passed"] or requested == "int8":
            os.replace(int8_path, model_path)
            check["chosen"] = "int8"
    if check["passed"]:
        check["reason"] = f"int8 top-{measured['k']} overlap {measured['overlap']} >= {min_overlap}"
    elif requested == "int8":
        check["reason"] = (f"int8 requested and kept although its top-{measured['k']} overlap {measured['overlap']} "
                           f"< {min_overlap}: its answers differ from the Python search path's")
    else:
        check["reason"] = (f"int8 top-{measured['k']} overlap {measured['overlap']} < {min_overlap} "
                           f"(worst: {measured['worst_query']!r}): kept float32")
    log.info("text tower: %s (%s)", check["chosen"], check["reason"])
    return check
