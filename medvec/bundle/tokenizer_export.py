"""The model's tokenizer as a small JSON the bundle's page tokenises with (schema medvec.tokenizer/1).

The page implements three tokenizer models in `web/tokenizer.js`: SentencePiece unigram with SigLIP's
text canonicalisation (SigLIP, MedSigLIP), word-level (the offline tiny models) and BPE with the byte-level
pre-tokenizer (CLIP's: NFC, whitespace collapsed, lower case, its regex, `</w>` ends a word), and WordPiece
with BERT's normaliser and pre-tokenizer (BiomedCLIP's BiomedBERT). Anything
else is refused here with the reason, rather than tokenised differently in the browser. After export,
`check_with_node` runs the page's own tokenizer under Node on a set of prompts and compares the ids with
the Python tokenizer's.
"""

from __future__ import annotations

import json
import re
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
    kind = model.get("type")
    if kind not in ("WordLevel", "BPE", "WordPiece"):
        raise TokenizerNotSupported(f"a {kind} tokenizers model; the browser bundle supports SentencePiece unigram, "
                                    "word-level, BPE (CLIP's byte-level) and WordPiece (BERT's) tokenizers")
    vocab = model["vocab"]
    by_id = [""] * (max(vocab.values()) + 1)
    for piece, index in vocab.items():
        by_id[index] = piece
    prefix, suffix = _template_ids(config.get("post_processor"), vocab)
    unk = model.get("unk_token")
    spec = {"schema": SCHEMA, "normalize": _normalize_steps(config.get("normalizer")), "vocab": by_id,
            "scores": None, "unk_id": vocab[unk] if unk in vocab else None, "pad_id": tokenizer.pad_token_id,
            "prefix_ids": prefix, "suffix_ids": suffix, "fuse_unk": bool(model.get("fuse_unk")), "length": length,
            # Typed as text, special tokens are matched before normalisation and become their own ids.
            "added_tokens": {t["content"]: t["id"] for t in config.get("added_tokens") or [] if not t.get("normalized")}}
    if kind == "WordLevel":
        pre = (config.get("pre_tokenizer") or {}).get("type")
        split = {"Whitespace": "words", "WhitespaceSplit": "whitespace"}.get(pre)
        if split is None:
            raise TokenizerNotSupported(f"the {pre} pre-tokenizer is not implemented in the browser")
        return spec | {"model": "wordlevel", "split": split, "fuse_unk": False}
    if kind == "WordPiece":
        return spec | {"model": "wordpiece", "pre_tokenize": _pre_tokenize_steps(config.get("pre_tokenizer")),
                       "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
                       "max_input_chars_per_word": model.get("max_input_chars_per_word", 100)}
    if model.get("dropout") or model.get("byte_fallback"):
        raise TokenizerNotSupported("BPE dropout and byte fallback are not implemented in the browser")
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    return spec | {"model": "bpe", "pre_tokenize": _pre_tokenize_steps(config.get("pre_tokenizer")), "merges": merges,
                   "end_of_word_suffix": model.get("end_of_word_suffix") or "",
                   "continuing_subword_prefix": model.get("continuing_subword_prefix") or "",
                   "ignore_merges": bool(model.get("ignore_merges"))}


def _parts(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    return component.get(key, []) if component["type"] == "Sequence" else [component]


def _normalize_steps(normalizer: dict | None) -> list:
    """tokenizers normalizers as `web/tokenizer.js` steps: names, or [\"replace\", regex, content]."""
    steps = []
    for part in _parts(normalizer, "normalizers"):
        kind = part["type"]
        if kind in ("Lowercase", "NFC", "NFKC", "NFD", "NFKD"):
            steps.append(kind.lower())
        elif kind == "BertNormalizer":  # BiomedBERT's: control characters out, CJK spaced, accents, case
            strip = part.get("strip_accents")
            steps.append(["bert", {"clean_text": part.get("clean_text", True),
                                   "handle_chinese_chars": part.get("handle_chinese_chars", True),
                                   "strip_accents": part.get("lowercase", True) if strip is None else strip,
                                   "lowercase": part.get("lowercase", True)}])
        elif kind == "Strip" and part.get("strip_left") and part.get("strip_right"):
            steps.append("strip")
        elif kind == "Replace":
            pattern = part["pattern"]
            regex = pattern["Regex"] if "Regex" in pattern else re.escape(pattern["String"])
            steps.append(["replace", regex, part["content"]])
        else:
            raise TokenizerNotSupported(f"the {kind} normalizer is not implemented in the browser")
    return steps


def _pre_tokenize_steps(pre_tokenizer: dict | None) -> list[dict]:
    """CLIP's pre-tokenizer (a Split that keeps its regex's matches, then ByteLevel), GPT-2's (ByteLevel),
    BERT's (whitespace, then each punctuation character on its own) and the whitespace splitters."""
    steps = []
    for part in _parts(pre_tokenizer, "pretokenizers"):
        kind = part["type"]
        if kind == "Split" and part.get("invert") and part.get("behavior") == "Removed" and "Regex" in part["pattern"]:
            steps.append({"type": "matches", "regex": part["pattern"]["Regex"]})
        elif kind == "ByteLevel":
            steps.append({"type": "bytelevel", "add_prefix_space": bool(part.get("add_prefix_space")),
                          "use_regex": part.get("use_regex", True)})
        elif kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer"):
            steps.append({"type": kind.lower()})
        else:
            raise TokenizerNotSupported(f"the {kind} pre-tokenizer ({part}) is not implemented in the browser")
    return steps


def _template_ids(post: dict | None, vocab: dict) -> tuple[list[int], list[int]]:
    """Special tokens before and after the text, from a TemplateProcessing post-processor."""
    if not post:
        return [], []
    if post.get("type") in ("RobertaProcessing", "BertProcessing"):  # CLIP's: <|startoftext|> text <|endoftext|>
        return [post["cls"][1]], [post["sep"][1]]
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
