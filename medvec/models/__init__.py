"""Embedding models: the registry of known models and the tiny offline builders (`medvec.models.tiny`)."""

from medvec.models.registry import REGISTRY, ModelSpec, model_rows, resolve_model, spec_from_model_dir

__all__ = ["REGISTRY", "ModelSpec", "model_rows", "resolve_model", "spec_from_model_dir"]
