"""Local transformers models (SigLIP, MedSigLIP, CLIP and the tiny test models) as an `Embedder`.

Image preparation reimplements the models' own image processors in PIL + numpy (tested equal
to them) as a small picklable object, so it can run in worker processes without torch.
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize
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
        pixels = np.asarray(image, dtype=np.float32) * (1 / 255)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@contextmanager
def quiet_transformers():
    """Config validation warns about default sub-config token ids our checkpoints never use, and
    per-weight progress bars flood logs; the pipeline reports its own progress."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _features(output):
    """transformers 5 returns BaseModelOutputWithPooling from get_*_features: the vector is
    `.pooler_output`; indexing [0] would silently return the token states instead."""
    return output if hasattr(output, "shape") else output.pooler_output


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


class TransformersEmbedder(Embedder):
    def __init__(self, spec: ModelSpec, model_dir: Path, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, revision: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.name, self.model_id, self.revision = spec, spec.name, spec.model_id, revision
        self.device = pick_device(device)
        self.batch_size = batch_size
        if dtype == "auto":
            dtype = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if self.device == "cuda" else "fp32"
        if dtype == "fp16" and self.device == "cpu":
            raise EmbedderError("fp16 is not supported on the CPU; use fp32 or bf16")
        self.dtype = dtype
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
        try:
            with quiet_transformers():
                self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval().to(self.device)
                self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"could not load {spec.name} from {model_dir}: {exc}") from exc
        config = self.model.config
        self.dim = int(getattr(config, "projection_dim", None) or config.vision_config.hidden_size)
        if self.dim != spec.dim:
            raise EmbedderError(f"{spec.name}: the registry says {spec.dim}-d embeddings but the model in "
                                f"{model_dir} gives {self.dim}-d; fix the registry entry or the model files")

    def image_preparer(self) -> PixelPreparer:
        s = self.spec
        return PixelPreparer(s.image_size, tuple(s.mean), tuple(s.std), s.resize, s.resample)

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        pixels = np.stack(prepared) if len(prepared) else np.zeros((0, 3, self.spec.image_size, self.spec.image_size))
        return self._in_batches(len(pixels), lambda a, b: self._image_features(pixels[a:b]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._in_batches(len(texts), lambda a, b: self._text_features(texts[a:b]))

    def runtime(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size}

    def close(self) -> None:
        self.model = None

    # --- internals ---------------------------------------------------------------------------

    def _in_batches(self, n: int, run) -> np.ndarray:
        """Run in chunks of batch_size; halve the batch size on out-of-memory and retry."""
        out, start = [], 0
        while start < n:
            end = min(n, start + self.batch_size)
            try:
                out.append(run(start, end))
                start = end
            except RuntimeError as exc:
                if not _is_out_of_memory(exc):
                    raise
                if self.batch_size == 1:
                    raise EmbedderError(f"{self.name} runs out of memory even one image at a time on "
                                        f"{self.device}") from exc
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory on %s: batch size now %d", self.device, self.batch_size)
                self._empty_cache()
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _empty_cache(self) -> None:
        import torch

        if self.device == "cuda":
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

        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        features = self._run(lambda: _features(self.model.get_image_features(pixel_values=tensor)))
        return l2_normalize(features.float().cpu().numpy())

    def _text_features(self, texts: list[str]) -> np.ndarray:
        padding = "max_length" if self.spec.text_padding == "max_length" else "longest"
        tokens = self.tokenizer(texts, padding=padding, max_length=self.spec.text_length, truncation=True,
                                return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"].to(self.device)}
        if "attention_mask" in tokens and self.spec.text_padding != "max_length":
            # SigLIP was trained without an attention mask (fixed 64-token text); CLIP uses one.
            inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
        features = self._run(lambda: _features(self.model.get_text_features(**inputs)))
        return l2_normalize(features.float().cpu().numpy())
