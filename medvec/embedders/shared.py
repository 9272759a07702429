"""One loaded encoder per model configuration in a process that serves several collections.

`medvec serve` and `medvec mcp` keep up to four collections open, each with its own search. A chest and a
dermatology collection embedded with the same model would otherwise each load that model (about 1.6 GB in
float32 for SigLIP-base); here they share one, and it is released when the last search using it closes.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from medvec.embedders.base import Embedder, ImagePreparer
from medvec.embedders.factory import EmbedderConfig, open_embedder


class SharedEmbedders:
    """Reference-counted embedders keyed by their configuration: `factory(config)` gives a callable that
    returns a handle on the one embedder for that configuration, opening it on first use."""

    def __init__(self, opener: Callable[[EmbedderConfig], Embedder] = open_embedder):
        self._opener = opener
        self._open: dict[EmbedderConfig, list] = {}  # config -> [embedder, handles not yet closed]
        self._lock = threading.Lock()

    def factory(self, config: EmbedderConfig) -> Callable[[], Embedder]:
        return lambda: self.acquire(config)

    def acquire(self, config: EmbedderConfig) -> Embedder:
        # Loading under the lock: two collections asking at once load the model once, not twice.
        with self._lock:
            entry = self._open.get(config)
            if entry is None:
                entry = self._open[config] = [self._opener(config), 0]
            entry[1] += 1
            return SharedEmbedder(entry[0], lambda: self._release(config))

    def loaded(self) -> int:
        """How many distinct embedders are loaded now."""
        with self._lock:
            return len(self._open)

    def _release(self, config: EmbedderConfig) -> None:
        with self._lock:
            entry = self._open[config]
            entry[1] -= 1
            if entry[1]:
                return
            del self._open[config]
        entry[0].close()


class SharedEmbedder(Embedder):
    """A handle on a shared embedder: it embeds through it, and `close` releases this handle only (once)."""

    def __init__(self, embedder: Embedder, release: Callable[[], None]):
        self.shared = embedder
        self.name, self.model_id = embedder.name, embedder.model_id
        self.revision, self.dim = embedder.revision, embedder.dim
        self._release: Callable[[], None] | None = release

    def image_preparer(self) -> ImagePreparer:
        return self.shared.image_preparer()

    def embed_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        return self.shared.embed_prepared(prepared)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.shared.embed_texts(texts)

    def runtime(self) -> dict[str, Any]:
        return self.shared.runtime()

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
