"""Embedders: one interface (`Embedder`), local transformers, local open_clip and remote NIM back-ends."""

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize

__all__ = ["Embedder", "EmbedderError", "l2_normalize"]
