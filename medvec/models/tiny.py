"""Tiny random-weight SigLIP and CLIP models, built offline by deterministic code.

They run the real loading and embedding code paths with no network, in seconds on a CPU. Their
weights are random: they have NO retrieval quality, and every place that shows them says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from medvec.models.quiet import quiet_transformers

log = logging.getLogger(__name__)

#: Bump when the recipe changes so old builds are rebuilt.
RECIPE_VERSION = "2"
SEED = 1234
MARKER = "MEDVEC_TINY_MODEL.txt"

#: A fixed word list is the whole vocabulary: a WordLevel tokenizer needs no training or download.
_WORDS = sorted(set("""
no acute cardiopulmonary process normal chest x ray radiograph frontal lateral pa ap view of the a an and
with without small large left right bilateral pleural effusion cardiomegaly enlarged heart cardiac
silhouette pneumothorax consolidation pneumonia atelectasis edema pulmonary opacity lung lesion mass
nodule fracture rib support device tube line catheter pacemaker finding findings mild moderate severe
this is photo image there blunted costophrenic angle lower lobe upper base apex hilar mediastinum
""".split()))


def build_word_tokenizer(out_dir: Path, words: list[str] | None = None, *, pad: str, eos: str, bos: str | None,
                         max_length: int, model_input_names: list[str] | None = None):
    """A WordLevel tokenizer over `words` (default: the tiny models' list), saved to `out_dir`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = [pad, "<unk>"] + ([bos] if bos else []) + ([eos] if eos != pad else [])
    vocab = {token: i for i, token in enumerate(specials + list(words or _WORDS))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # Like the real tokenizers: SigLIP appends </s>; CLIP wraps in <s> ... </s> and pools at </s>.
    template = f"{bos} $A {eos}" if bos else f"$A {eos}"
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in {eos, bos} if t])
    extra = {"model_input_names": model_input_names} if model_input_names else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, eos_token=eos, unk_token="<unk>",
                                        bos_token=bos, model_max_length=max_length, **extra)
    tokenizer.save_pretrained(out_dir)
    return tokenizer, vocab


def _is_built(out_dir: Path) -> bool:
    # The marker is written last and the folder moved into place whole, so a marker means a complete build.
    marker = out_dir / MARKER
    return marker.exists() and f"recipe {RECIPE_VERSION}," in marker.read_text()


@contextmanager
def _seeded(seed: int = SEED):
    """Same weights on every build, without resetting the caller's global torch RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _begin_build(out_dir: str | Path) -> tuple[Path, Path | None]:
    """(out_dir, an empty scratch folder beside it), or (out_dir, None) when already built."""
    out_dir = Path(out_dir).absolute()
    if _is_built(out_dir):
        return out_dir, None
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return out_dir, tmp


def _finish(tmp: Path, out_dir: Path, what: str) -> Path:
    (tmp / MARKER).write_text(f"{what}, recipe {RECIPE_VERSION}, seed {SEED}: random weights, NO retrieval quality. "
                              "Built by medvec.models.tiny for offline runs and tests.\n")
    if out_dir.exists():
        shutil.rmtree(out_dir, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Another process finished the same build first: theirs is byte-identical, keep it.
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_built(out_dir):
            raise
    return out_dir


def build_tiny_siglip(out_dir: str | Path) -> Path:
    """The registry's tiny-siglip: a SigLIP with 2 layers per tower, its width the registry's dim, and a
    WordLevel tokenizer that pads with </s> to 64 tokens like SigLIP's; same bytes on every build."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    from medvec.models.registry import REGISTRY

    spec = REGISTRY["tiny-siglip"]
    image_size, width = spec.image_size, spec.dim
    out_dir, tmp = _begin_build(out_dir)
    if tmp is None:
        return out_dir
    # Like google/siglip-*: no attention mask, because SigLIP was trained without one.
    _, vocab = build_word_tokenizer(tmp, pad="</s>", eos="</s>", bos=None, max_length=spec.text_length,
                                model_input_names=["input_ids"])

    config = SiglipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": width, "intermediate_size": 2 * width,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": spec.text_length,
                     "pad_token_id": vocab["</s>"], "bos_token_id": vocab["</s>"], "eos_token_id": vocab["</s>"]},
        vision_config={"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
    )
    with _seeded(), quiet_transformers():
        SiglipModel(config).eval().save_pretrained(tmp)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3, resample=3).save_pretrained(tmp)
    log.info("built tiny-siglip at %s (random weights: no retrieval quality)", out_dir)
    return _finish(tmp, out_dir, "tiny-siglip")


def build_tiny_clip(out_dir: str | Path, image_size: int = 32) -> Path:
    """A 32-d CLIP for testing the CLIP code path (EOS pooling, longest padding, centre crop).
    Not a registry model: load it with `resolve_model("clip-b32", dim=32, image_size=image_size)`."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from medvec.models.registry import CLIP_MEAN, CLIP_STD

    out_dir, tmp = _begin_build(out_dir)
    if tmp is None:
        return out_dir
    _, vocab = build_word_tokenizer(tmp, pad="<pad>", eos="</s>", bos="<s>", max_length=77)

    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "pad_token_id": vocab["<pad>"],
                     "bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"]},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=32,
    )
    with _seeded(), quiet_transformers():
        CLIPModel(config).eval().save_pretrained(tmp)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                          image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3).save_pretrained(tmp)
    return _finish(tmp, out_dir, "tiny-clip")


def build_tiny_biomedclip(out_dir: str | Path, image_size: int = 224) -> Path:
    """A 32-d open_clip model shaped like BiomedCLIP: a timm ViT-Tiny image tower (224 px: open_clip does
    not pass other sizes to timm) and a Hugging Face BERT text tower with CLS pooling and an MLP
    projection, loadable with open_clip's `local-dir:` schema.
    Needs the biomedclip extra. The text tower lives in `out_dir/text`, named by absolute path."""
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from medvec.models.registry import CLIP_MEAN, CLIP_STD

    out_dir, tmp = _begin_build(out_dir)
    if tmp is None:
        return out_dir
    (tmp / "text").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(WordPiece(ids, unk_token="[UNK]"))  # a BERT-style uncased WordPiece, like BiomedBERT's
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=256)
    # open_clip's `local-dir:` reads the tokenizer from the model folder itself, as BiomedCLIP's repo has it.
    tokenizer.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp / "text")
    with _seeded(), quiet_transformers():
        BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256)).save_pretrained(tmp / "text")
    text_dir = str(out_dir / "text")  # where it will live once the build is moved into place
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    }
    (tmp / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                                   "interpolation": "bicubic", "resize_mode": "shortest"}}, indent=1))
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(tmp / "text"), "hf_tokenizer_name": str(tmp / "text")}
    with _seeded(), quiet_transformers():
        model = CustomTextCLIP(embed_dim=32, vision_cfg=model_cfg["vision_cfg"], text_cfg=text_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "open_clip_model.safetensors"))
    return _finish(tmp, out_dir, "tiny-biomedclip")


#: Registry name → builder, for the models Medvec makes itself.
TINY_BUILDERS = {"tiny-siglip": build_tiny_siglip, "tiny-biomedclip": build_tiny_biomedclip}
