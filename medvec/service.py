"""The search a user's settings describe: which model's table, and how to load its encoder."""

from __future__ import annotations

from dataclasses import replace

from medvec.models.registry import resolve_model
from medvec.search import ImageSearch
from medvec.settings import DEFAULT_MODEL, Settings


def search_model_name(settings: Settings, model: str | None = None) -> str:
    if model:
        return model
    if settings.embedder == "nim" and settings.model == DEFAULT_MODEL:
        return "nvclip"  # what `embedder_from_env` names a NIM when no model is set
    return settings.model


def open_search(settings: Settings, model: str | None = None, *, refresh_seconds: float = 2.0) -> ImageSearch:
    """An `ImageSearch` over the model's table; the text/image encoder loads on first novel query."""
    from medvec.embedders.loading import embedder_from_settings

    name = search_model_name(settings, model)
    overrides = {k: v for k, v in (("dim", settings.model_dim), ("image_size", settings.model_image_size)) if v}
    spec = resolve_model(name, **overrides)
    model_settings = replace(settings, model=name)
    return ImageSearch(settings.lancedb_uri, spec.slug, model_name=spec.name, home=settings.home,
                       embedder_factory=lambda: embedder_from_settings(model_settings),
                       refresh_seconds=refresh_seconds)
