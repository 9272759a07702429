"""The one embedder interface every back-end implements, so callers never branch on the kind.

Images arrive as the normalised WebP bytes Medvec stores. Preparing an image (decode, resize,
normalise, or encode for HTTP) is split from embedding it, so the pipeline can prepare in worker
processes with prefetch while the accelerator embeds: `image_preparer()` returns a picklable
callable, `embed_prepared()` embeds what it returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np

ImagePreparer = Callable[[bytes], Any]


class EmbedderError(RuntimeError):
    """A failure that stops an embedding batch, worded as what to do next."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Embedder(ABC):
    """L2-normalised float32 vectors for images and texts, in one shared space per model."""

    #: Registry name (e.g. "siglip-base"), model id (HF id or NIM model), resolved revision.
    name: str
    model_id: str
    revision: str | None
    dim: int

    @abstractmethod
    def image_preparer(self) -> ImagePreparer:
        """A picklable function: normalised image bytes (WebP/PNG) → what `embed_prepared` takes."""

    @abstractmethod
    def embed_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """(n, dim) float32, L2-normalised, in input order."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised, in input order."""

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Convenience for small inputs (search queries): prepare in process, then embed."""
        prepare = self.image_preparer()
        return self.embed_prepared([prepare(image) for image in images])

    def runtime(self) -> dict[str, Any]:
        """Device, dtype, batch size and the like, for asset metadata."""
        return {}

    def close(self) -> None:
        """Release the model or connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
