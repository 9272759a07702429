"""The model's tokenizer as a small JSON the bundle's page tokenises with (schema medvec.tokenizer/1).

The page implements exactly two tokenizer models in `web/tokenizer.js`: SentencePiece unigram with
SigLIP's text canonicalisation (SigLIP, MedSigLIP) and word-level (the offline tiny-siglip). Anything
else is refused here with the reason, rather than tokenised differently in the browser. After export,
`check_with_node` runs the page's own tokenizer under Node on a set of prompts and compares the ids with
the Python tokenizer's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

WEB_DIR = Path(__file__).resolve().parent / "web"
SCHEMA = "medvec.tokenizer/1"

# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class TokenizerNotSupported(ValueError):
    """The page cannot tokenise like this model's tokenizer; says which part and what is supported."""


def export_tokenizer(tokenizer, length: int) -> dict:
    """The spec `web/tokenizer.js` reads, for a transformers tokenizer padded to `length` tokens."""
    if hasattr(tokenizer, "sp_model") and hasattr(tokenizer, "canonicalize_text"):
        return _sentencepiece_spec(tokenizer, length)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return _tokenizers_spec(json.loads(backend.to_str()), tokenizer, length)
    raise TokenizerNotSupported(f"{type(tokenizer).__name__} has neither a SentencePiece model nor a tokenizers "
                                "backend; the browser bundle supports SigLIP's SentencePiece and word-level "
                                "tokenizers")


def python_token_ids(tokenizer, texts: Sequence[str], length: int) -> list[list[int]]:
    """What the embedder feeds the text tower (TransformersEmbedder._text_features: max_length padding)."""
    return tokenizer(list(texts), padding="max_length", max_length=length, truncation=True)["input_ids"]


def _sentencepiece_spec(tokenizer, length: int) -> dict:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.sp_model.serialized_model_proto())
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM; BPE, WORD and CHAR models segment differently
        raise TokenizerNotSupported("the SentencePiece model is not a unigram model; the browser bundle "
                                    "implements unigram segmentation only")
    if proto.trainer_spec.byte_fallback:
        raise TokenizerNotSupported("the SentencePiece model falls back to bytes, which the browser "
                                    "tokenizer does not implement")
    specials = {str(t) for t in tokenizer.all_special_tokens}
    user_defined = [p.piece for p in proto.pieces if p.type == _USER_DEFINED and p.piece not in specials]
    if user_defined:
        raise TokenizerNotSupported(f"the SentencePiece model has user-defined symbols ({user_defined[:3]}), "
                                    "which the browser tokenizer does not implement")
    # SiglipTokenizer.canonicalize_text: lower case, drop ASCII punctuation, one space between words;
    # SentencePiece then applies its nmt_nfkc normalisation.
    steps = (["lowercase"] if getattr(tokenizer, "do_lower_case", True) else []) + [
        "strip_punctuation", "collapse_whitespace"]
    if proto.normalizer_spec.name.startswith("nmt_nfkc") or proto.normalizer_spec.name == "nfkc":
        steps += ["nfkc", "collapse_whitespace"]
    return {
        "schema": SCHEMA, "model": "unigram", "normalize": steps, "split": "metaspace",
        "vocab": [p.piece for p in proto.pieces], "scores": [round(float(p.score), 6) for p in proto.pieces],
        "skip_ids": [i for i, p in enumerate(proto.pieces) if p.type not in (_NORMAL,)],
        "unk_id": tokenizer.unk_token_id, "pad_id": tokenizer.pad_token_id, "prefix_ids": [],
        "suffix_ids": [tokenizer.eos_token_id], "fuse_unk": True, "length": length,
    }


def _tokenizers_spec(config: dict, tokenizer, length: int) -> dict:
    model = config.get("model") or {}
    if model.get("type") != "WordLevel":
        raise TokenizerNotSupported(f"a {model.get('type')} tokenizers model; the browser bundle supports "
                                    "SigLIP's SentencePiece unigram and word-level tokenizers")
    steps = []
    normalizer = config.get("normalizer")
    for part in (normalizer.get("normalizers", []) if normalizer and normalizer["type"] == "Sequence"
                 else [normalizer] if normalizer else []):
        step = {"Lowercase": "lowercase", "NFKC": "nfkc"}.get(part["type"])
        if step is None:
            raise TokenizerNotSupported(f"the {part['type']} normalizer is not implemented in the browser")
        steps.append(step)
    pre = (config.get("pre_tokenizer") or {}).get("type")
    split = {"Whitespace": "words", "WhitespaceSplit": "whitespace"}.get(pre)
    if split is None:
        raise TokenizerNotSupported(f"the {pre} pre-tokenizer is not implemented in the browser")
    vocab = model["vocab"]
    by_id = [""] * (max(vocab.values()) + 1)
    for piece, index in vocab.items():
        by_id[index] = piece
    prefix, suffix = _template_ids(config.get("post_processor"), vocab)
    return {
        "schema": SCHEMA, "model": "wordlevel", "normalize": steps, "split": split, "vocab": by_id, "scores": None,
        "unk_id": vocab[model["unk_token"]], "pad_id": tokenizer.pad_token_id, "prefix_ids": prefix,
        "suffix_ids": suffix, "fuse_unk": False, "length": length,
    }


def _template_ids(post: dict | None, vocab: dict) -> tuple[list[int], list[int]]:
    """Special tokens before and after the text, from a TemplateProcessing post-processor."""
    if not post:
        return [], []
    if post.get("type") != "TemplateProcessing":
        raise TokenizerNotSupported(f"the {post.get('type')} post-processor is not implemented in the browser")
    prefix, suffix, seen_text = [], [], False
    for item in post["single"]:
        if "Sequence" in item:
            seen_text = True
            continue
        name = item["SpecialToken"]["id"]
        ids = post["special_tokens"][name]["ids"] if name in post.get("special_tokens", {}) else [vocab[name]]
        (suffix if seen_text else prefix).extend(ids)
    return prefix, suffix


def check_with_node(spec: dict, texts: Sequence[str], expected: Sequence[Sequence[int]], *,
                    node: str | None = None, timeout: float = 60.0) -> dict:
    """Run the page's tokenizer under Node on `texts` and compare with `expected` (the Python ids).

    Returns {"checked": bool, "prompts", "matching", "mismatches": [text, ...], "node"} or, without
    Node, {"checked": False, "reason"}.
    """
    node = node or shutil.which("node")
    if not node:
        return {"checked": False, "reason": "node not found: the browser tokenizer was not checked at build time"}
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=timeout).stdout.strip()
    done = subprocess.run([node, str(WEB_DIR / "tokenize_check.js")], input=json.dumps({"tokenizer": spec,
                          "texts": list(texts)}), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"node could not run the bundle's tokenizer: {done.stderr.strip()[-500:]}")
    got = json.loads(done.stdout)
    mismatches = [text for text, mine, theirs in zip(texts, got, expected) if list(mine) != list(theirs)]
    return {"checked": True, "node": version, "prompts": len(texts), "matching": len(texts) - len(mismatches),
            "mismatches": mismatches[:10], "js_ids": got}
