"""What a bundle's page encodes queries with: the model's tokenizer as JSON and its text tower as ONNX (int8
or float32), each checked against the Python model at build time; their manifest entry and checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from medvec.bundle.export_onnx import check_text_onnx, cpu_float32_text_tower, export_text_tower
from medvec.bundle.quantize import choose_text_precision
from medvec.bundle.tokenizer_export import (TokenizerNotSupported, check_with_node, export_tokenizer,
                                            python_token_ids)
from medvec.datasets.vocabulary import CHEST
from medvec.search.precompute import FALLBACK_QUERIES

#: Texts the ONNX export and the browser tokenizer are checked on, besides the common queries and the
#: evaluation prompts: capitals, punctuation, spacing, non-ASCII, and one longer than 64 tokens.
EXTRA_PROMPTS = (
    "Pleural effusion.", "LEFT lower lobe, consolidation;  ", "  no   acute  cardiopulmonary process  ",
    "x-ray: 'heart' is (mildly) enlarged!", "rib #4 fracture?", "épanchement pleural",
    "ｘ－ｒａｙ ｃｈｅｓｔ",
    "tube\tand\nline", "an opacity that is in no fallback list",
    "heart size is " + "normal and " * 40 + "stable",
)
#: How the tokenizer check varies each prompt: the ways people type queries that a byte-level BPE or a
#: WordPiece tokenizer splits differently (contractions, digits, units, punctuation runs, accents, emoji).
_VARIANTS = (
    str.upper, str.title, lambda t: f"{t}.", lambda t: f"there's {t}, isn't it?", lambda t: f"{t} (2 cm, T4-T5)",
    lambda t: f"{t}!!! -- see 3.5mm", lambda t: f"«{t}» naïve café", lambda t: f"{t} \u00a0 ✓ 🫁", lambda t: f"'{t}'d",
)


def check_prompts() -> list[str]:
    """The prompts the ONNX text tower is checked on (each once, in order)."""
    return list(dict.fromkeys((*FALLBACK_QUERIES, *(p for ps in CHEST.prompts.values() for p in ps),
                               *EXTRA_PROMPTS)))


def tokenizer_prompts() -> list[str]:
    """Several hundred texts the page's tokenizer must match Python's on: the check prompts and variants."""
    prompts = check_prompts()
    return list(dict.fromkeys([*prompts, *(vary(text) for vary in _VARIANTS for text in prompts[:60])]))


def write_text_model(model_dir: Path, embedder, image_vectors: np.ndarray, *, text_precision: str = "auto",
                     node: str | None = None, progress: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Write `tokenizer.json` and `text.onnx` into `model_dir`; return the manifest entry and the checks.

    The ONNX text tower is checked against PyTorch, then (unless float32 is asked for) quantised to int8
    and kept when its top-10 over `image_vectors` matches float32's on the fallback queries
    (medvec/bundle/quantize.py).
    """
    spec = embedder.spec
    # The tokenizer first: it is the cheap step that refuses models the page cannot serve.
    tokenizer = export_tokenizer(embedder.tokenizer, spec.text_length)
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")))
    texts = tokenizer_prompts()
    node_check = check_with_node(tokenizer, texts, python_token_ids(embedder.tokenizer, texts, spec.text_length),
                                 node=node)
    node_check.pop("js_ids", None)
    if node_check.get("checked") and node_check["matching"] != node_check["prompts"]:
        raise TokenizerNotSupported(f"the page's tokenizer disagrees with {spec.name}'s on "
                                    f"{node_check['prompts'] - node_check['matching']} prompt(s), e.g. "
                                    f"{node_check['mismatches'][:3]}; the bundle would search for other words")

    progress(f"exporting the {spec.name} text tower to ONNX")
    prompts = check_prompts()
    token_ids = python_token_ids(embedder.tokenizer, prompts, spec.text_length)
    module = cpu_float32_text_tower(embedder)
    path = model_dir / "text.onnx"
    onnx_info = export_text_tower(module, token_ids, path)
    onnx_check = check_text_onnx(module, path, token_ids, prompts)
    if text_precision != "float32":
        progress("quantising the text tower to int8 and comparing its answers with float32's")
    queries = list(FALLBACK_QUERIES)
    precision = choose_text_precision(path, text_precision, python_token_ids(embedder.tokenizer, queries,
                                      spec.text_length), queries, image_vectors)
    progress(f"text tower: {precision['chosen']} ({precision['reason']})")
    entry = {**onnx_info, "file": "model/text.onnx", "tokenizer": "model/tokenizer.json",
             "tokenizer_model": tokenizer["model"], "precision": precision["chosen"], "bytes": path.stat().st_size}
    return entry, {"onnx": onnx_check, "tokenizer": node_check, "text_precision": precision}
