"""The search a user's settings describe: which model's table, and how to load its encoder."""

from __future__ import annotations

from dataclasses import replace

from medvec.models.registry import resolve_model
from medvec.search.images import ImageSearch
from medvec.settings import DEFAULT_MODEL, Settings


def search_model_name(settings: Settings, model: str | None = None) -> str:
    if model:
        return model
    if settings.embedder == "nim" and settings.model == DEFAULT_MODEL:
        return "nvclip"  # what `embedder_from_env` names a NIM when no model is set
    return settings.model


def open_search(settings: Settings, model: str | None = None, *, refresh_seconds: float = 2.0) -> ImageSearch:
    """An `ImageSearch` over the model's table; the text/image encoder loads on first novel query."""
    from medvec.embedders.factory import embedder_from_settings

    name = search_model_name(settings, model)
    overrides = {k: v for k, v in (("dim", settings.model_dim), ("image_size", settings.model_image_size)) if v}
    spec = resolve_model(name, **overrides)
    model_settings = replace(settings, model=name)
    return ImageSearch(settings.lancedb_uri, spec.slug, model_name=spec.name, home=settings.home,
                       embedder_factory=lambda: embedder_from_settings(model_settings),
                       refresh_seconds=refresh_seconds)


def eval_targets(settings: Settings, models: list[str] | None = None):
    """Models to evaluate: the named ones, else every model table in the database. A table's text
    encoder is the registry model with its slug (tables of unregistered models: image → image only)."""
    from medvec.tables import database
    from medvec.tables.inventory import medvec_tables
    from medvec.embedders.factory import embedder_from_settings
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
            # The configured model is encoded the way it was embedded (local or NIM); others locally,
            # except NIM-only models.
            kind = settings.embedder if name == current else ("nim" if REGISTRY[name].loader == "nim" else "local")
            model_settings = replace(settings, model=name, embedder=kind)
            opener = lambda s=model_settings: embedder_from_settings(s)  # noqa: E731
        targets.append(EvalTarget(model=name, table=image_table_name(slug), open_embedder=opener))
    return targets
