"""The `medvec` commands that drive Dagster: `ingest`, `backfill` and `demo`.

They extend the domain's parser through the `medvec.commands` entry point (pyproject.toml), so users type
one `medvec` command while `medvec/` never imports Dagster. Dagster itself is imported only when one of
these commands runs, so `medvec --help` works without it and these commands say which extra to install.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from medvec import progress
from medvec.cli.options import add_collection_option, add_render_options
from medvec.cli.output import print_errors, print_json, progress_bars, refuse
from medvec.datasets.adapters import DATASET_NAMES
from medvec.settings import DEFAULT_BATCH_SIZE, Settings, get_settings, local_state_dir

EXTRA = "dagster"


def register(sub) -> None:
    """Add `ingest`, `backfill` and `demo` to the domain's `medvec` parser."""
    # Dagster marks BackfillPolicy as beta on every import; users of the CLI cannot act on it.
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    p = sub.add_parser("ingest", help="open batches for new files in SOURCE and materialise them in process")
    p.add_argument("source", nargs="?", help="folder or s3://bucket/prefix (default: $MEDVEC_SOURCE)")
    p.add_argument("--limit", type=int, help="take at most N new files")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files per batch (default 2000)")
    p.add_argument("--metadata", help="metadata CSV (default: labels.csv or metadata.csv at the source root)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="read labels as this dataset publishes them (default: detected)")
    p.add_argument("--dry-run", action="store_true", help="list the batches that would open; change nothing")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--no-embed", action="store_true", help="normalise only; do not embed")
    p.add_argument("--json", action="store_true", help="print one summary object")
    add_collection_option(p)
    add_render_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("backfill", help="re-run batches from their manifests: named ones, all, or the failed ones")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--batches", nargs="+", metavar="BATCH", help="these batches (`medvec backfill --all --dry-run` lists them)")
    which.add_argument("--all", action="store_true", help="every batch")
    which.add_argument("--failed", action="store_true", help="batches whose last run failed or never finished")
    which.add_argument("--forget", nargs=2, metavar=("PATH", "BATCH"),
                       help="drop one file (its path or stored uri) from BATCH's manifest; re-run BATCH afterwards")
    p.add_argument("--per-run", type=int, default=8, help="batches per embedding run (default 8; the model loads once)")
    p.add_argument("--no-embed", action="store_true", help="normalise only")
    p.add_argument("--no-refresh", action="store_true", help="do not refresh the search assets afterwards")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="list the batches that would re-run; change nothing")
    p.add_argument("--json", action="store_true", help="print one summary object")
    add_collection_option(p)
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("demo", help="sample data → WebP → embeddings → search, offline")
    p.add_argument("--count", type=int, default=36, help="synthetic chest images in the sample (default 36)")
    p.add_argument("--batch-size", type=int, default=16, help="files per batch, one Dagster run each (default 16)")
    add_collection_option(p)
    p.set_defaults(func=cmd_demo)


def dagster_missing(command: str) -> str | None:
    """What to install when Dagster is not importable here, else None."""
    try:
        import dagster  # noqa: F401
    except ImportError as exc:
        return (f"medvec {command} drives Dagster, which is not installed here ({exc}): "
                f"pip install 'medvec[{EXTRA}]'")
    return None


def ensure_dagster_home(settings: Settings) -> Path:
    """Runs launched from the CLI land where `make dagster` / `dagster dev` look for them (a home on S3
    keeps Dagster's instance in the local cache: SQLite needs a local folder)."""
    home = Path(settings.dagster_home or local_state_dir(settings) / "dagster").absolute()
    os.environ["DAGSTER_HOME"] = str(home)  # where DagsterInstance.get() looks, in this process
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


# --- ingest --------------------------------------------------------------------------------------

def cmd_ingest(args: argparse.Namespace, settings: Settings | None = None) -> int:
    if missing := dagster_missing("ingest"):
        return refuse(missing)
    settings = settings or get_settings()
    if not args.dry_run:
        from medvec.phi import MissingPseudonymKey, require_pseudonym_key

        try:  # refused here, before any batch opens, not inside a run's worker processes
            require_pseudonym_key(settings.pseudonym_key and settings.pseudonym_key.get_secret_value(),
                                  settings.allow_dev_key)
        except MissingPseudonymKey as exc:
            return refuse(str(exc))
        ensure_dagster_home(settings)
    from pipelines.ingest import ingest

    source = args.source or settings.source
    source = source if source.startswith("s3://") else os.path.abspath(os.path.expanduser(source))
    metadata = args.metadata
    if metadata and not metadata.startswith("s3://"):
        metadata = str(Path(metadata).absolute())
    with progress.listening(progress_bars(not args.json)):
        summary = ingest(source, settings, limit=args.limit, batch_size=args.batch_size, metadata_csv=metadata, dataset=args.dataset,
                         dry_run=args.dry_run, workers=args.workers, embed=not args.no_embed,
                         normalize_config={"size": args.size, "thumb_size": args.thumb_size,
                                           "pad_square": args.pad_square, "window": args.window,
                                           "allow_tags": args.allow_tag,
                                           "allow_columns": args.allow_column})
    if args.json:
        print_json(summary.to_json())
        return 0 if not summary.failed_runs else 1
    return _print_ingest(summary, settings)


def _print_ingest(summary, settings: Settings) -> int:
    if summary.dry_run:
        print(f"dry run: {summary.files} new file(s) in {len(summary.batches)} batch(es) "
              f"would be opened from {summary.source}" + (f" (metadata: {summary.metadata_csv})" if summary.metadata_csv else ""))
        for batch in summary.batches:
            print(f"  {batch}")
        return 0
    if not summary.batches:
        print(f"nothing new in {summary.source}: every file already belongs to a batch")
        return 0
    print(f"ingested {summary.files} file(s) in {len(summary.batches)} batch(es) in {summary.seconds:.1f}s: "
          f"{summary.ok} ok, {len(summary.errors)} error(s), {summary.skipped} skipped"
          + (f"; {summary.reports} report(s) from {summary.report_files} report file(s) and the CSV pair"
             if summary.reports else ""))
    print(f"  images and thumbnails: {settings.home / 'images'}, {settings.home / 'thumbs'}")
    print(f"  batch records:         {settings.home / 'batches'}")
    if summary.model:
        print(f"  embeddings:            {summary.embedded} vector(s) from {summary.model} in table {summary.table} "
              f"at {settings.lancedb_uri}; {summary.embed_skipped} already there (not embedded again)")
    print_errors(summary.errors)
    if summary.failed_runs:
        print(f"Dagster runs failed for batch(es) {', '.join(summary.failed_runs)}: open `dagster dev` to see why")
        return 1
    return 0


# --- backfill ------------------------------------------------------------------------------------

def cmd_backfill(args: argparse.Namespace) -> int:
    """Re-run chosen batches from their manifests, in process: named ones, all, or the failed ones."""
    if args.forget:
        return _forget(args, get_settings())
    if missing := dagster_missing("backfill"):
        return refuse(missing)
    settings = get_settings()
    ensure_dagster_home(settings)
    import dagster as dg

    from medvec.ingest.backfill_plan import select_batches
    from medvec.ingest.batches import list_batches
    from pipelines.backfill import backfill, batch_status, dead_runs, reap_dead_runs

    instance = dg.DagsterInstance.get()
    # A killed medvec command's runs would look in progress forever (and hold their pool slot).
    reaped = [run.run_id for run in dead_runs(instance)] if args.dry_run else reap_dead_runs(instance)
    known = list_batches(settings.home)
    status = batch_status(instance, known, embed=not args.no_embed) if args.failed else None
    try:
        chosen = select_batches(known, names=args.batches, every=args.all, status=status)
    except ValueError as exc:
        return refuse(f"medvec backfill: {exc}")
    if args.dry_run:
        return _print_backfill_plan(args, chosen, known, status, reaped)
    if not chosen and not args.json:
        print(f"nothing to re-run: none of {len(known)} batch(es) failed")
        return 0
    with progress.listening(progress_bars(not args.json)):
        summary = backfill(settings, chosen, instance=instance, per_run=args.per_run, embed=not args.no_embed,
                           refresh=not args.no_refresh, normalize_config={"workers": args.workers})
    summary.reaped_runs = reaped
    if args.json:
        print_json(summary.to_json())
        return 0 if not summary.failed_runs else 1
    return _print_backfill(summary, chosen, reaped)


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from medvec.ingest.forget import forget_entry

    path, batch = args.forget
    try:
        gone = forget_entry(settings.home, batch, path)
    except (KeyError, FileNotFoundError) as exc:
        return refuse(f"medvec backfill --forget: {exc.args[0]}")
    if args.json:
        print_json({"batch": batch, "forgotten": gone})
    else:
        print(f"batch {batch}: forgot {len(gone)} file(s); re-run it with `medvec backfill --batches {batch}`")
    return 0


def _print_backfill_plan(args: argparse.Namespace, chosen: list, known: list, status: dict | None,
                         reaped: list) -> int:
    if args.json:
        print_json({"dry_run": True, "batches": chosen, "status": status, "dead_runs": reaped})
        return 0
    print(f"would re-run {len(chosen)} of {len(known)} batch(es)")
    for batch in chosen:
        print(f"  {batch}" + (f"  ({status[batch]})" if status else ""))
    if reaped:
        print(f"{len(reaped)} run(s) of a killed medvec command look in progress; a real backfill marks them "
              "failed first (their batches then count as failed)")
    return 0


def _print_backfill(summary, chosen: list, reaped: list) -> int:
    runs = ", ".join("[" + " ".join(group) + "]" for group in summary.embed_runs) or "none"
    print(f"re-ran {len(chosen)} batch(es) in {summary.seconds:.1f}s: {summary.ok} image(s) ok, {summary.errors} "
          f"error(s); {summary.normalize_runs} normalise run(s), embedding runs {runs}")
    if summary.model:
        print(f"  {summary.embedded} vector(s) from {summary.model} in {summary.table}, "
              f"{summary.embed_skipped} already there (not embedded again)"
              + ("; search assets refreshed" if summary.indexed else ""))
    if reaped:
        print(f"  {len(reaped)} run(s) of a killed medvec command marked failed and their pool slots freed")
    if summary.failed_runs:
        print(f"runs failed for {', '.join(summary.failed_runs)}: see `make dagster` (Runs) for why")
        return 1
    return 0


# --- demo ----------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    """Sample data → batches → WebP → embeddings → indexes, offline, then a few searches."""
    from medvec.cli.sample import cmd_sample_data
    from medvec.cli.tour import choose_demo_model, run_evaluation, show_collection, show_next_steps, show_searches

    if missing := dagster_missing("demo"):
        return refuse(missing)
    settings = get_settings()
    sample_dir = local_state_dir(settings) / "sample_data"
    if not (sample_dir / "labels.csv").exists():
        cmd_sample_data(argparse.Namespace(dir=str(sample_dir), count=args.count))
    # The demo's sample data is synthetic: the public development key is allowed here, and only here.
    settings = choose_demo_model(settings).model_copy(update={"allow_dev_key": True})
    ingest_args = argparse.Namespace(source=str(sample_dir), limit=None, batch_size=args.batch_size, no_embed=False,
                                     metadata=None, dataset=None, dry_run=False, json=False, workers=0, size=512,
                                     thumb_size=256, pad_square=False, window="header", allow_tag=[],
                                     allow_column=[])
    started = time.perf_counter()
    code = cmd_ingest(ingest_args, settings)
    print("(the sample holds one truncated DICOM and one text file on purpose: 2 errors are expected)")
    show_collection(settings)
    searched = show_searches(settings, sample_dir)
    run_evaluation(settings)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f}s. Next steps:")
    show_next_steps(str(ensure_dagster_home(settings)))
    return code or searched
