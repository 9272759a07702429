"""The model registry: the one place that knows each model's loader, dimension and preprocessing.

Facts from ../shared/reference/models.md. Any other Hugging Face SigLIP/CLIP id works through
`resolve_model` with overrides, or from its own config once its files are on disk.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Mapping

from medvec.models.demo_clip import DIM as DEMO_DIM
from medvec.models.demo_clip import IMAGE_SIZE as DEMO_IMAGE_SIZE
from medvec.models.demo_clip import NAME as DEMO_NAME
from medvec.models.demo_clip import QUALITY_NOTE as DEMO_NOTE
from medvec.models.demo_clip import TEXT_LENGTH as DEMO_TEXT_LENGTH
from medvec.models.demo_clip import WEIGHTS_DIR as DEMO_WEIGHTS_DIR

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
#: Models whose files ship inside the package: registry name → folder.
PACKAGED_MODELS = {DEMO_NAME: DEMO_WEIGHTS_DIR}
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

LOADERS = ("transformers", "open_clip", "nim")
RESIZES = ("squash", "pad_square", "shortest_edge_crop")
RESAMPLES = ("bicubic", "bilinear")
TEXT_PADDINGS = ("max_length", "longest")


RANDOM_WEIGHTS_NOTE = "random weights: no retrieval quality (offline demo and tests only)"
SYNTHETIC_NOTE = DEMO_NOTE  # medvec-demo-clip's: trained on synthetic images


def quality_note(model_name: str) -> str:
    """What to say beside a model's results when they carry no clinical meaning; "" for real models."""
    spec = REGISTRY.get(model_name)
    return spec.quality_note if spec else ""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key, or the Hugging Face id for models outside the registry
    model_id: str  # Hugging Face id, open_clip "hf-hub:" id, or NIM model id
    loader: str  # "transformers" | "open_clip" | "nim"
    dim: int
    image_size: int
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    resize: str = "squash"  # "squash" | "pad_square" | "shortest_edge_crop"
    resample: str = "bicubic"  # "bicubic" | "bilinear"
    text_length: int = 64
    # SigLIP was trained on text padded to exactly 64 tokens and pools the last token, so "longest"
    # silently changes its text vectors; CLIP pools at EOS, so "longest" is exact and cheaper.
    text_padding: str = "max_length"  # "max_length" | "longest"
    licence: str = ""
    gated: bool = False  # needs accepted terms and HF_TOKEN to download
    revision: str | None = None  # pinned default Hub revision; None = main
    tokenizer_id: str | None = None  # a second repo the text tower needs (BiomedCLIP's BiomedBERT)
    no_retrieval_quality: bool = False  # random weights: offline runs and tests only
    # Shown beside every result this model gives (page, CLI, MCP, HTTP) when its answers are not clinical:
    # random weights, or weights trained on synthetic images only.
    quality_note: str = ""
    notes: str = ""

    def __post_init__(self):
        problems = [f"{field}={value!r} is not one of {allowed}" for field, value, allowed in (
            ("loader", self.loader, LOADERS), ("resize", self.resize, RESIZES),
            ("resample", self.resample, RESAMPLES), ("text_padding", self.text_padding, TEXT_PADDINGS))
            if value not in allowed]
        if self.dim <= 0 or self.image_size <= 0:
            problems.append(f"dim and image_size must be positive (got {self.dim}, {self.image_size})")
        if problems:
            raise ValueError(f"model {self.name}: " + "; ".join(problems))

    @property
    def slug(self) -> str:
        """Table-name-safe name (`images__<slug>`): lowercase, [a-z0-9_] only."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    def to_dict(self) -> dict:
        return asdict(self)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("siglip-base", "google/siglip-base-patch16-224", "transformers", 768, 224, licence="Apache-2.0"),
    ModelSpec("siglip-so400m", "google/siglip-so400m-patch14-384", "transformers", 1152, 384, licence="Apache-2.0"),
    ModelSpec("medsiglip", "google/medsiglip-448", "transformers", 1152, 448, resize="pad_square", gated=True,
              licence="Health AI Developer Foundations terms (gated; not a cleared medical device)",
              notes="Google's serving code zero-pads to square before resizing; its evals used a bilinear "
                    "tf.image.resize, the Hugging Face processor (used here) bicubic PIL"),
    ModelSpec("clip-b32", "openai/clip-vit-base-patch32", "transformers", 512, 224, CLIP_MEAN, CLIP_STD,
              resize="shortest_edge_crop", text_length=77, text_padding="longest", licence="MIT",
              notes="general-domain photos, a baseline"),
    ModelSpec("biomedclip", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip", 512, 224,
              CLIP_MEAN, CLIP_STD, resize="shortest_edge_crop", text_length=256, text_padding="max_length",
              tokenizer_id="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
              licence="MIT; its model card rules out deployed use (research only)",
              notes="open_clip checkpoint: needs the biomedclip extra and both repos offline"),
    ModelSpec("nvclip", "nvidia/nvclip", "nim", 1024, 224, CLIP_MEAN, CLIP_STD, text_length=77,
              text_padding="longest", licence="NVIDIA AI Foundation Models terms",
              notes="remote NIM: server-side preprocessing; self-hosted model id nvidia/nvclip-vit-h-14"),
    ModelSpec(DEMO_NAME, "medvec/demo-clip", "transformers", DEMO_DIM, DEMO_IMAGE_SIZE, text_length=DEMO_TEXT_LENGTH,
              licence="Apache-2.0 (trained here, medvec.models.demo_clip.train)", quality_note=DEMO_NOTE,
              notes="small SigLIP-shaped model shipped with Medvec, trained on synthetic chest images: the offline "
                    "demo's model"),
    ModelSpec("tiny-siglip", "medvec/tiny-siglip", "transformers", 64, 32, licence="generated locally",
              no_retrieval_quality=True, quality_note=RANDOM_WEIGHTS_NOTE,
              notes="random weights: for offline runs and tests only, no retrieval quality"),
    ModelSpec("tiny-biomedclip", "medvec/tiny-biomedclip", "open_clip", 32, 224, CLIP_MEAN, CLIP_STD,
              resize="shortest_edge_crop", text_length=256, text_padding="max_length", licence="generated locally",
              no_retrieval_quality=True, quality_note=RANDOM_WEIGHTS_NOTE,
              notes="random weights, BiomedCLIP-shaped: tests the open_clip path offline, no retrieval quality"),
)}

_SPEC_FIELDS = {f.name for f in fields(ModelSpec)}


def resolve_model(name_or_id: str, **overrides) -> ModelSpec:
    """A registry entry (with overrides), or any Hugging Face SigLIP/CLIP id.

    `resolve_model("my-org/my-siglip", dim=768, image_size=224)` makes a transformers spec with
    SigLIP defaults; without `dim`/`image_size` they are read from the model's config when it is
    already in the local Hugging Face cache (no network), else this raises KeyError saying what to give.
    """
    unknown = set(overrides) - _SPEC_FIELDS
    if unknown:
        raise TypeError(f"not ModelSpec fields: {', '.join(sorted(unknown))}")
    if name_or_id in REGISTRY:
        return replace(REGISTRY[name_or_id], **overrides) if overrides else REGISTRY[name_or_id]
    if "/" not in name_or_id:
        raise KeyError(f"unknown model {name_or_id!r}; known: {', '.join(REGISTRY)} "
                       "(or a Hugging Face id such as my-org/my-siglip)")
    if "dim" not in overrides or "image_size" not in overrides:
        config, preprocessor = _cached_configs(name_or_id, overrides.get("revision"))
        if config is None:
            raise KeyError(f"{name_or_id} is not in the registry and its config is not in the local Hugging Face "
                           "cache: give dim and image_size (e.g. resolve_model(id, dim=768, image_size=224)) "
                           "or download the model first")
        return spec_from_config(name_or_id, config, preprocessor, **overrides)
    return ModelSpec(**{"name": name_or_id, "model_id": name_or_id, "loader": "transformers", **overrides})


def spec_from_config(model_id: str, config: Mapping, preprocessor: Mapping | None = None, **overrides) -> ModelSpec:
    """A spec from a transformers `config.json` (and `preprocessor_config.json`) of a SigLIP or CLIP model."""
    model_type = config.get("model_type")
    vision = config.get("vision_config") or {}
    if model_type == "clip":
        found = {"dim": config.get("projection_dim", 512), "mean": CLIP_MEAN, "std": CLIP_STD,
                 "resize": "shortest_edge_crop", "text_length": 77, "text_padding": "longest"}
    elif model_type == "siglip":
        found = {"dim": vision.get("hidden_size", 768)}
    else:
        raise KeyError(f"{model_id} is a {model_type!r} model; Medvec embeds with SigLIP or CLIP dual encoders "
                       "(config model_type 'siglip' or 'clip')")
    found["image_size"] = vision.get("image_size", 224)
    if preprocessor:
        found.update(_preprocessing(preprocessor))
    return ModelSpec(**{"name": model_id, "model_id": model_id, "loader": "transformers", **found, **overrides})


def spec_from_model_dir(model_id: str, model_dir: str | Path, **overrides) -> ModelSpec:
    """`spec_from_config` for a model folder on disk (a local or S3 mirror)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    processor_file = model_dir / "preprocessor_config.json"
    preprocessor = json.loads(processor_file.read_text()) if processor_file.exists() else None
    return spec_from_config(model_id, config, preprocessor, **overrides)


def _preprocessing(preprocessor: Mapping) -> dict:
    """Resize rule, resample and mean/std as the model's own image processor would apply them."""
    found: dict = {}
    if preprocessor.get("image_mean"):
        found["mean"] = tuple(float(v) for v in preprocessor["image_mean"])
    if preprocessor.get("image_std"):
        found["std"] = tuple(float(v) for v in preprocessor["image_std"])
    # PIL codes: 2 bilinear, 3 bicubic (the only two the preparer implements).
    found["resample"] = {2: "bilinear", 3: "bicubic"}.get(preprocessor.get("resample", 3), "bicubic")
    size = preprocessor.get("size")
    if isinstance(size, Mapping) and "shortest_edge" in size:
        found["resize"] = "shortest_edge_crop"
    return found


def _cached_configs(model_id: str, revision: str | None,
                    cache_dirs: Iterable[str | Path | None] = (None,)) -> tuple[dict | None, dict | None]:
    configs = []
    for filename in ("config.json", "preprocessor_config.json"):
        path = _cached_file(model_id, filename, revision, cache_dirs)
        configs.append(json.loads(Path(path).read_text()) if path else None)
    return configs[0], configs[1]


def _cached_file(model_id: str, filename: str, revision: str | None,
                 cache_dirs: Iterable[str | Path | None]) -> str | None:
    """The cached file's path, without touching the network; `None` in cache_dirs = the default HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for cache_dir in cache_dirs:
        path = try_to_load_from_cache(model_id.removeprefix("hf-hub:"), filename, cache_dir=cache_dir,
                                      revision=revision)
        if isinstance(path, str):
            return path
    return None


# Files whose presence means a model folder is usable by its loader.
_LOADER_FILE = {"transformers": "config.json", "open_clip": "open_clip_config.json"}


def availability(spec: ModelSpec, model_dir: str | Path | None = None,
                 hub_cache_dirs: Iterable[str | Path | None] = (None,)) -> tuple[bool, str]:
    """Can this machine run the model now, and if not, why (in plain words)."""
    if spec.loader == "nim":
        from medvec.settings import get_settings

        return (True, "") if get_settings().nim_url else (False, "set MEDVEC_NIM_URL to a NIM endpoint")
    if spec.loader == "open_clip":
        try:
            import open_clip  # noqa: F401
        except ImportError:
            return False, "install the biomedclip extra (pip install -e '.[biomedclip]')"
    if spec.no_retrieval_quality or spec.name in PACKAGED_MODELS:
        return True, ""  # built locally on first use, or shipped with Medvec
    needed = _LOADER_FILE[spec.loader]
    if model_dir is not None and (Path(model_dir) / needed).exists():
        return True, ""
    hub_cache_dirs = list(hub_cache_dirs)
    missing = [] if _cached_file(spec.model_id, needed, spec.revision, hub_cache_dirs) else [spec.model_id]
    if spec.tokenizer_id and not _cached_file(spec.tokenizer_id, "config.json", None, hub_cache_dirs):
        missing.append(spec.tokenizer_id)
    if not missing:
        return True, ""
    reason = f"not downloaded ({', '.join(m.removeprefix('hf-hub:') for m in missing)})"
    if spec.gated:
        reason += "; gated: accept its terms on huggingface.co and set HF_TOKEN"
    return False, reason


def model_rows(available_dirs: Mapping[str, str | Path] | None = None, *,
               hub_cache_dirs: Iterable[str | Path | None] = (None,)) -> list[dict]:
    """One row per registry model for `medvec models [--json]` (a stable contract: keys below).

    `available_dirs` maps a registry name (or model id) to a local model folder, e.g. a mirror;
    `hub_cache_dirs` are Hugging Face caches to look in (None = the default one).
    """
    available_dirs = available_dirs or {}
    hub_cache_dirs = list(hub_cache_dirs)
    rows = []
    for spec in REGISTRY.values():
        model_dir = available_dirs.get(spec.name) or available_dirs.get(spec.model_id)
        available, why_not = availability(spec, model_dir, hub_cache_dirs)
        rows.append({"name": spec.name, "model_id": spec.model_id, "dim": spec.dim, "image_size": spec.image_size,
                     "loader": spec.loader, "gated": spec.gated, "licence": spec.licence,
                     "no_retrieval_quality": spec.no_retrieval_quality, "quality_note": spec.quality_note,
                     "available": available,
                     "why_not": why_not})
    return rows
