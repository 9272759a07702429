"""The search a user's settings describe: which model's table, and how to load its encoder."""

from __future__ import annotations

from medvec.embedders.factory import embedder_config, open_embedder
from medvec.embedders.shared import SharedEmbedders
from medvec.search.images import ImageSearch
from medvec.settings import Settings


def search_model_name(settings: Settings, model: str | None = None) -> str:
    """The model whose table a search reads: `model`, else the configured one (as the factory names it)."""
    return embedder_config(settings, model).spec.name


def open_search(settings: Settings, model: str | None = None, *, refresh_seconds: float = 2.0,
                embedders: SharedEmbedders | None = None) -> ImageSearch:
    """An `ImageSearch` over the model's table; the text/image encoder loads on first novel query (from
    `embedders` when given, so searches of several collections with one model share one encoder)."""
    config = embedder_config(settings, model)
    factory = embedders.factory(config) if embedders is not None else (lambda: open_embedder(config))
    return ImageSearch(settings.lancedb_uri, config.spec.slug, model_name=config.spec.name, home=settings.home,
                       embedder_factory=factory, refresh_seconds=refresh_seconds,
                       max_pixels=settings.max_pixels, upload_concurrency=settings.upload_concurrency)
