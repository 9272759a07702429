"""Local open_clip models (BiomedCLIP) as an `Embedder`; needs the `biomedclip` extra.

BiomedCLIP is an open_clip checkpoint, not a transformers one: `AutoModel` cannot load it. Its
text tower and tokenizer name a second repo (BiomedBERT), so an offline copy needs both; the
model folder's `open_clip_config.json` may point `hf_model_name`/`hf_tokenizer_name` at a local path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize
from medvec.embedders.transformers_local import PixelPreparer, pick_device
from medvec.models.registry import ModelSpec

log = logging.getLogger(__name__)


class OpenClipEmbedder(Embedder):
    def __init__(self, spec: ModelSpec, model_dir: Path, *, device: str = "auto", batch_size: int = 32,
                 revision: str | None = None):
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise EmbedderError(f"{spec.name} needs open_clip: install the biomedclip extra "
                                "(pip install -e '.[biomedclip]')") from exc
        self.spec, self.name, self.model_id, self.revision = spec, spec.name, spec.model_id, revision
        self.device, self.batch_size, self.dtype = pick_device(device), batch_size, "fp32"
        self._torch = torch
        try:
            self.model, _ = open_clip.create_model_from_pretrained(f"local-dir:{model_dir}", device=self.device)
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise EmbedderError(f"could not load {spec.name} from {model_dir}: {exc}") from exc
        self.model.eval()
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["probe"], context_length=spec.text_length).to(self.device))
        self.dim = int(probe.shape[-1])
        if self.dim != spec.dim:
            raise EmbedderError(f"{spec.name}: the registry says {spec.dim}-d embeddings but the model in "
                                f"{model_dir} gives {self.dim}-d")

    def image_preparer(self) -> PixelPreparer:
        s = self.spec  # open_clip's transform: shortest edge, bicubic, centre crop rounded like torchvision
        return PixelPreparer(s.image_size, tuple(s.mean), tuple(s.std), s.resize, s.resample, crop_rounding="round")

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        out = []
        for start in range(0, len(prepared), self.batch_size):
            pixels = torch.from_numpy(np.stack(prepared[start:start + self.batch_size])).to(self.device)
            with torch.inference_mode():
                out.append(self.model.encode_image(pixels).float().cpu().numpy())
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), context_length=self.spec.text_length)
            with torch.inference_mode():
                out.append(self.model.encode_text(tokens.to(self.device)).float().cpu().numpy())
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def runtime(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size}

    def close(self) -> None:
        self.model = None
