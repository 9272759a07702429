"""The search a user's settings describe: which model's table, and how to load its encoder."""

from __future__ import annotations

from medvec.embedders.factory import embedder_config, open_embedder
from medvec.models.registry import resolve_model
from medvec.search.images import ImageSearch
from medvec.settings import Settings


def search_model_name(settings: Settings, model: str | None = None) -> str:
    """The model whose table a search reads: `model`, else the configured one (as the factory names it)."""
    return embedder_config(settings, model).spec.name


def open_search(settings: Settings, model: str | None = None, *, refresh_seconds: float = 2.0) -> ImageSearch:
    """An `ImageSearch` over the model's table; the text/image encoder loads on first novel query."""
    config = embedder_config(settings, model)
    return ImageSearch(settings.lancedb_uri, config.spec.slug, model_name=config.spec.name, home=settings.home,
                       embedder_factory=lambda: open_embedder(config), refresh_seconds=refresh_seconds,
                       max_pixels=settings.max_pixels, upload_concurrency=settings.upload_concurrency)


def eval_targets(settings: Settings, models: list[str] | None = None):
    """Models to evaluate: the named ones, else every model table in the database. A table's text
    encoder is the registry model with its slug (tables of unregistered models: image → image only)."""
    from medvec.tables import database
    from medvec.tables.inventory import medvec_tables
    from medvec.evaluation.retrieval import EvalTarget
    from medvec.home import image_table_name, is_image_table, model_slug_of
    from medvec.models.registry import REGISTRY

    by_slug = {spec.slug: spec.name for spec in REGISTRY.values()}
    if models:
        names = [resolve_model(m).name if m in REGISTRY else m for m in models]
        slugs = [resolve_model(m).slug for m in models]
    else:
        slugs = [model_slug_of(t) for t in medvec_tables(database.connect(settings.lancedb_uri)) if is_image_table(t)]
        names = [by_slug.get(s, s) for s in slugs]
    current = search_model_name(settings)
    targets = []
    for name, slug in zip(names, slugs):
        opener = None
        if name == current or name in REGISTRY:
            # The configured model is encoded the way it was embedded (local or NIM); others locally
            # (the factory opens a NIM-only model as a NIM).
            kind = None if name == current else "local"
            opener = lambda n=name, k=kind: open_embedder(embedder_config(settings, n, kind=k))  # noqa: E731
        targets.append(EvalTarget(model=name, table=image_table_name(slug), open_embedder=opener))
    return targets
