"""`medvec models`, `medvec stats`, `medvec collections` and `medvec reset`: what this machine can run and what
the home (and each of its collections) holds."""

from __future__ import annotations

import argparse

from medvec.cli.options import add_collection_option
from medvec.cli.output import print_json, refuse
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("models", help="list known embedding models and whether this machine can run them")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("stats", help="images by view and modality, subjects, studies, errors, models and tables")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_collection_option(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("collections", help="the collections in the home (chest, dermatology, ...) and their images")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("reset", help="drop Medvec's LanceDB tables (only with --yes)")
    p.add_argument("--yes", action="store_true", help="really drop them")
    add_collection_option(p)
    p.set_defaults(func=cmd_reset)


def cmd_models(args: argparse.Namespace) -> int:
    from medvec.models.registry import model_rows

    rows = model_rows(hub_cache_dirs=[get_settings().model_cache / "hub", None])
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<15} {'dim':>5} {'px':>4}  {'loader':<12} {'available':<9}  model id / note")
    for row in rows:
        note = row.get("why_not") or ""
        if row.get("no_retrieval_quality"):
            note = "random weights: no retrieval quality"
        print(f"{row['name']:<15} {row['dim']:>5} {row['image_size']:>4}  {row['loader']:<12} "
              f"{'yes' if row['available'] else 'no':<9}  {row['model_id']}" + (f"  ({note})" if note else ""))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from medvec.tables.inventory import collection_stats

    settings = get_settings()
    stats = collection_stats(settings.lancedb_uri, settings.home)
    if args.json:
        print_json(stats)
        return 0
    print(f"{stats['images']} image(s), {stats['subjects']} subject(s), {stats['studies']} study(ies) "
          f"in {stats['lancedb_uri']}")
    for title in ("view", "modality", "split", "label"):
        counts = stats[f"by_{title}"]
        if counts:
            print(f"  by {title:<9} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print(f"  errors     {stats['errors']}" + (f" ({', '.join(f'{k}: {v}' for k, v in stats['errors_by_stage'].items())})"
                                               if stats["errors"] else ""))
    for model in stats["models"]:
        print(f"  model {model['model']:<16} table {model['table']:<28} {model['rows']:>8} row(s)  "
              f"{model['dim']}-d  indexes: {', '.join(model['indexes']) or 'none'}")
    if not stats["models"]:
        print("  no embeddings yet: run `medvec ingest SOURCE` (or `make demo`)")
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    from medvec.tables.inventory import home_collections

    settings = get_settings()
    rows = home_collections(settings)
    if args.json:
        print_json({"home": str(settings.root_home), "collections": rows})
        return 0
    print(f"{len(rows)} collection(s) in {settings.root_home}:")
    for row in rows:
        name = row["name"] or "(the home itself)"
        print(f"  {name:<24} {row['images']:>8} image(s)" + ("  (default)" if row["default"] else ""))
    if not any(row["name"] for row in rows):
        print("no named collections: `medvec ingest SOURCE --collection NAME` starts one")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from medvec.tables.database import connect
    from medvec.tables.inventory import medvec_tables, reset_tables

    settings = get_settings()
    names = medvec_tables(connect(settings.lancedb_uri))
    if not args.yes:
        return refuse(f"medvec reset drops {len(names)} table(s) at {settings.lancedb_uri}: {', '.join(names) or 'none'}.\n"
                      "Nothing was changed. Run `medvec reset --yes` to drop them.")
    dropped = reset_tables(settings.lancedb_uri, settings.home)
    print(f"dropped {len(dropped)} table(s): {', '.join(dropped) or 'none'}. Batches and WebP files under "
          f"{settings.home} are kept; `medvec ingest` embeds them again.")
    return 0
