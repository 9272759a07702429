"""Which models' tables an evaluation covers, each with the way to open its text encoder and the
vocabulary its labels are judged in (MEDVEC_VOCABULARY, applied to that table's labels)."""

from __future__ import annotations

from medvec.embedders.factory import embedder_config, open_embedder
from medvec.models.registry import resolve_model
from medvec.settings import Settings


def eval_targets(settings: Settings, models: list[str] | None = None):
    """Models to evaluate: the named ones, else every model table in the database. A table's text
    encoder is the registry model with its slug (tables of unregistered models: image → image only)."""
    from medvec.tables import database
    from medvec.tables.inventory import medvec_tables
    from medvec.datasets.vocabulary import table_vocabulary
    from medvec.evaluation.retrieval import EvalTarget
    from medvec.home import image_table_name, is_image_table, model_slug_of
    from medvec.models.registry import REGISTRY

    by_slug = {spec.slug: spec.name for spec in REGISTRY.values()}
    db = database.connect(settings.lancedb_uri)
    if models:
        names = [resolve_model(m).name if m in REGISTRY else m for m in models]
        slugs = [resolve_model(m).slug for m in models]
    else:
        slugs = [model_slug_of(t) for t in medvec_tables(db) if is_image_table(t)]
        names = [by_slug.get(s, s) for s in slugs]
    current = embedder_config(settings).spec.name
    targets = []
    for name, slug in zip(names, slugs):
        opener = None
        if name == current or name in REGISTRY:
            # The configured model is encoded the way it was embedded (local or NIM); others locally
            # (the factory opens a NIM-only model as a NIM).
            kind = None if name == current else "local"
            opener = lambda n=name, k=kind: open_embedder(embedder_config(settings, n, kind=k))  # noqa: E731
        table = image_table_name(slug)
        vocabulary = table_vocabulary(database.open_table_if_exists(db, table), settings.vocabulary)
        targets.append(EvalTarget(model=name, table=table, open_embedder=opener, vocabulary=vocabulary))
    return targets
