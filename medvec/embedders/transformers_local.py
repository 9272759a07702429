"""Local transformers models (SigLIP, MedSigLIP, CLIP and the tiny test models) as an `Embedder`.

Image preparation reimplements the models' own image processors in PIL + numpy (tested equal
to them) as a small picklable object, so it can run in worker processes without torch.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize
from medvec.imaging.colour import channels_equal
from medvec.models.quiet import quiet_transformers  # noqa: F401 - re-exported for the benchmarks
from medvec.models.registry import ModelSpec

log = logging.getLogger(__name__)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PixelPreparer:
    """Normalised image bytes → float32 (3, size, size), as the model's image processor would."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    resample: str
    crop_rounding: str = "floor"  # HF image processors floor the crop offset; torchvision rounds it

    def __call__(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return self.from_image(image)

    def from_image(self, image: Image.Image) -> np.ndarray:
        if image.mode not in ("L", "LA", "P", "RGB", "RGBA"):
            # convert("RGB") would clip 16-bit or float pixels to white instead of scaling them.
            raise ValueError(f"expected a normalised 8-bit image, got PIL mode {image.mode}")
        image = image.convert("RGB")  # grey radiographs are replicated to 3 channels
        resample = _RESAMPLE[self.resample]
        if self.resize == "pad_square":  # MedSigLIP's serving code: zero-pad, then resize
            side = max(image.size)
            square = Image.new("RGB", (side, side))
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        if self.resize == "shortest_edge_crop":  # CLIP: shortest edge to size, then centre crop
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.size * long / short)
            target = (self.size, new_long) if width <= height else (new_long, self.size)
            image = image.resize(target, resample)
            offset = (lambda extra: int(round(extra / 2.0))) if self.crop_rounding == "round" else (lambda e: e // 2)
            left, top = offset(image.width - self.size), offset(image.height - self.size)
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            image = image.resize((self.size, self.size), resample)
        pixels = np.asarray(image)
        if channels_equal(pixels):
            # A grey WebP decodes with channels up to 1 level apart (lossy chroma rounding): replicate one
            # so a radiograph reaches the model as exact grey; colour photographs keep their channels.
            pixels = np.repeat(pixels[..., 1:2], 3, axis=2)
        pixels = pixels.astype(np.float32) * (1 / 255)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def pick_device(requested: str = "auto") -> str:
    """cuda, then Apple's mps, then cpu; an explicit choice is taken as given."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> str:
    """auto: bf16 autocast on CUDA where the GPU has it, else fp16; fp32 elsewhere."""
    import torch

    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise EmbedderError(f"dtype must be auto, fp32, bf16 or fp16, not {requested!r}")
    if requested == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device == "cpu":
        # torch has no fp16 matmul on the CPU ("addmm_impl_cpu_" not implemented for 'Half').
        raise EmbedderError("fp16 does not run on the CPU; use dtype fp32 or bf16")
    return requested


def features_of(output):
    """transformers 5 returns BaseModelOutputWithPooling from get_*_features: the vector is
    `.pooler_output`; indexing [0] would silently return the token states instead."""
    return output if hasattr(output, "shape") else output.pooler_output


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _embedding_dim(config) -> int:
    """CLIP projects both towers to `projection_dim`; SigLIP's image vector is the vision width."""
    if config.model_type == "clip":
        return int(config.projection_dim)
    return int(config.vision_config.hidden_size)


class TransformersEmbedder(Embedder):
    """A SigLIP-family or CLIP dual encoder loaded from a local folder (never the network)."""

    def __init__(self, spec: ModelSpec, model_dir: Path, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, revision: str | None = None):
        import torch

        if batch_size < 1:
            raise EmbedderError(f"batch_size must be at least 1, not {batch_size}")
        self.spec, self.name, self.model_id = spec, spec.name, spec.model_id
        self.revision = revision if revision is not None else spec.revision
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        model_dir = Path(model_dir)
        self.model = self._load_model(model_dir)
        self.tokenizer = self._load_tokenizer(model_dir)
        config = self.model.config
        # SigLIP was trained on unmasked, fixed-length text; giving it a mask changes its vectors.
        self._text_mask = config.model_type != "siglip"
        try:
            self.dim, model_size = _embedding_dim(config), int(config.vision_config.image_size)
        except AttributeError as exc:
            raise EmbedderError(f"{model_dir} holds a {config.model_type!r} model; Medvec embeds with SigLIP or "
                                "CLIP dual encoders") from exc
        if self.dim != spec.dim:
            raise EmbedderError(f"{spec.name}: the registry says {spec.dim}-d embeddings but the model in "
                                f"{model_dir} gives {self.dim}-d; fix the registry entry (dim) or the model files")
        if model_size != spec.image_size:
            raise EmbedderError(f"{spec.name}: the registry says {spec.image_size} px images but the model in "
                                f"{model_dir} takes {model_size} px; fix the registry entry (image_size)")
        log.info("loaded %s on %s (%s, batch %d)", spec.name, self.device, self.dtype, batch_size)

    def _load_model(self, model_dir: Path):
        from transformers import AutoModel

        try:
            with quiet_transformers():
                model, loading = AutoModel.from_pretrained(model_dir, local_files_only=True,
                                                           output_loading_info=True)
        except (OSError, ValueError, KeyError) as exc:
            raise EmbedderError(f"could not load {self.spec.name} from {model_dir}: {exc}") from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise EmbedderError(f"{model_dir} holds a {type(model).__name__}, not an image-text model: Medvec needs "
                                "a SigLIP or CLIP dual encoder (a classification fine-tune has no text tower)")
        # Missing weights would be randomly initialised and only logged by transformers: a checkpoint
        # without its text tower would then embed text as noise, silently.
        missing = sorted(loading.get("missing_keys") or ())
        if missing:
            raise EmbedderError(f"{model_dir} lacks {len(missing)} weight(s) of {type(model).__name__} "
                                f"(e.g. {', '.join(missing[:3])}): it is not a complete image-text checkpoint")
        return model.eval().to(self.device)

    def _load_tokenizer(self, model_dir: Path):
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, ImportError, AttributeError, TypeError) as exc:
            if (model_dir / "spiece.model").exists() and not _has_sentencepiece():
                raise EmbedderError(f"{self.spec.name}'s tokenizer is SentencePiece: install the sentencepiece "
                                    "package (pip install sentencepiece)") from exc
            raise EmbedderError(f"could not load the tokenizer of {self.spec.name} from {model_dir}: {exc}") from exc

    def image_preparer(self) -> PixelPreparer:
        s = self.spec
        return PixelPreparer(s.image_size, tuple(s.mean), tuple(s.std), s.resize, s.resample)

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        pixels = np.stack(prepared).astype(np.float32, copy=False)
        return self._in_batches(len(pixels), lambda a, b: self._image_features(pixels[a:b]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._in_batches(len(texts), lambda a, b: self._text_features(texts[a:b]))

    def runtime(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size}

    def close(self) -> None:
        self.model = None
        self._empty_cache()

    # --- internals ---------------------------------------------------------------------------

    def _in_batches(self, n: int, run) -> np.ndarray:
        """Run in chunks of batch_size; on out-of-memory halve the batch size (kept for later calls) and retry."""
        out, start = [], 0
        while start < n:
            end = min(n, start + self.batch_size)
            try:
                out.append(run(start, end))
                start = end
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not _is_out_of_memory(exc):
                    raise
                self._empty_cache()
                if self.batch_size == 1:
                    raise EmbedderError(f"{self.name} runs out of memory on {self.device} even one input at a "
                                        "time; use a smaller model, a bigger GPU or device=cpu") from exc
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory on %s: batch size now %d", self.device, self.batch_size)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _empty_cache(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _run(self, fn):
        import torch

        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self._autocast):
                    return fn()
            return fn()

    def _image_features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        features = self._run(lambda: features_of(self.model.get_image_features(pixel_values=tensor)))
        return l2_normalize(features.float().cpu().numpy())

    def _text_features(self, texts: list[str]) -> np.ndarray:
        # max_length is the padded length for "max_length" (SigLIP: 64) and the truncation limit for
        # "longest" (CLIP: 77 positions).
        tokens = self.tokenizer(texts, padding=self.spec.text_padding, max_length=self.spec.text_length,
                                truncation=True, return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"].to(self.device)}
        if self._text_mask and "attention_mask" in tokens:
            inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
        features = self._run(lambda: features_of(self.model.get_text_features(**inputs)))
        return l2_normalize(features.float().cpu().numpy())


def _has_sentencepiece() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True
