"""The `medvec` command line: argument parsing and presentation only; work happens in the domain.

`--json` output is a stable contract (README, "Command line"); everything else is for humans.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from medvec.settings import DEFAULT_BATCH_SIZE, Settings, SettingsError, get_settings, local_state_dir

log = logging.getLogger("medvec")


def _bar(total: int, desc: str, enabled: bool, unit: str = "img"):
    from tqdm import tqdm

    # Not a terminal (CI logs, pipes): no bar; the summary that follows says what happened.
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False,
                disable=not enabled or not sys.stderr.isatty(), mininterval=0.5)


# --- normalize ---------------------------------------------------------------------------------

def cmd_normalize(args) -> int:
    from medvec.imaging.dicom import UnreadableImage
    from medvec.datasets.metadata_csv import MetadataTable
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
    from medvec.phi import Pseudonymizer
    from medvec.tables.records import IngestError
    from medvec.sources import LocalFolderSource

    settings = get_settings()
    out = Path(args.out)
    pseudonymizer = Pseudonymizer(settings.pseudonym_key and settings.pseudonym_key.get_secret_value())
    metadata = (MetadataTable.from_csv_text(Path(args.metadata).read_text(encoding="utf-8-sig"), pseudonymizer,
                                            tuple(args.allow_column)) if args.metadata else None)
    options = NormalizeOptions(size=args.size, thumb_size=args.thumb_size, pad_square=args.pad_square,
                               window=args.window, allow_tags=tuple(args.allow_tag))
    files = [entry.uri for path in args.inputs for entry in LocalFolderSource(path).list_files()]
    records, errors = [], []
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    with _bar(len(files), "normalising", not args.json) as bar:
        for uri in files:
            try:
                result = normalize_bytes(Path(uri).read_bytes(), uri, options=options, pseudonymizer=pseudonymizer,
                                         metadata=metadata.lookup(uri) if metadata else None)
            except UnreadableImage as exc:
                errors.append(IngestError(uri, "", exc.stage, exc.error, exc.reason))
            except OSError as exc:
                errors.append(IngestError(uri, "", "read", type(exc).__name__, f"could not read the file ({exc})"))
            except Exception as exc:  # noqa: BLE001 - one decoder bug must not stop the other files
                log.exception("unexpected failure normalising one file")
                errors.append(IngestError(uri, "", "decode", type(exc).__name__,
                                          f"unexpected failure while decoding ({str(exc)[:200]})"))
            else:
                name = result.record.image_id
                (out / "images" / f"{name}.webp").write_bytes(result.view_webp)
                (out / "thumbs" / f"{name}.webp").write_bytes(result.thumb_webp)
                result.record.image_uri = f"images/{name}.webp"
                result.record.thumb_uri = f"thumbs/{name}.webp"
                records.append(result.record)
            bar.update(1)
    with open(out / "records.jsonl", "w") as fh:
        for record in records:
            fh.write(json.dumps(record.to_row()) + "\n")
    if args.json:
        print(json.dumps({"out": str(out), "ok": len(records), "errors": len(errors),
                          "records": [r.to_row() for r in records],
                          "error_records": [e.to_row() for e in errors]}, indent=2))
    else:
        print(f"{len(records)} image(s) written to {out}/images and {out}/thumbs; records in {out}/records.jsonl")
        _print_errors(errors)
    return 0 if records or not files else 1


def _print_errors(errors) -> None:
    if not errors:
        return
    print(f"{len(errors)} file(s) could not be normalised:")
    for error in errors[:20]:
        print(f"  {error.source_uri}\n    {error.stage}: {error.message}")
    if len(errors) > 20:
        print(f"  ... and {len(errors) - 20} more (see the ingest_errors table or --json)")


# --- ingest --------------------------------------------------------------------------------------

def _ensure_dagster_home(settings: Settings) -> Path:
    """Runs launched from the CLI land where `make dagster` / `dagster dev` look for them (a home on S3
    keeps Dagster's instance in the local cache: SQLite needs a local folder)."""
    home = Path(settings.dagster_home or local_state_dir(settings) / "dagster").absolute()
    os.environ["DAGSTER_HOME"] = str(home)  # where DagsterInstance.get() looks, in this process
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


def cmd_ingest(args, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    if not args.dry_run:
        _ensure_dagster_home(settings)
    from medvec import progress
    from pipelines.ingest import ingest

    source = args.source or settings.source
    source = source if source.startswith("s3://") else os.path.abspath(os.path.expanduser(source))
    metadata = args.metadata
    if metadata and not metadata.startswith("s3://"):
        metadata = str(Path(metadata).absolute())
    bars: dict[str, object] = {}

    def on_progress(what: str, done: int, total: int) -> None:
        if args.json:
            return
        bar = bars.get(what)
        if bar is None:
            # Batches report images; model downloads and hashing report bytes.
            unit = "img" if what.startswith(("batch", "embed")) else "B"
            bar = bars[what] = _bar(total, what, True, unit)
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    with progress.listening(on_progress):
        summary = ingest(source, settings, limit=args.limit, batch_size=args.batch_size, metadata_csv=metadata,
                         dry_run=args.dry_run, workers=args.workers, embed=not args.no_embed,
                         normalize_config={"size": args.size, "thumb_size": args.thumb_size,
                                           "pad_square": args.pad_square, "window": args.window,
                                           "allow_tags": args.allow_tag,
                                           "allow_columns": args.allow_column})
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
        return 0 if not summary.failed_runs else 1
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
              f"at {settings.lancedb_uri}")
    _print_errors(summary.errors)
    if summary.failed_runs:
        print(f"Dagster runs failed for batch(es) {', '.join(summary.failed_runs)}: open `dagster dev` to see why")
        return 1
    return 0


# --- models and the embedding server ----------------------------------------------------------

def cmd_models(args) -> int:
    from medvec.models.registry import model_rows

    rows = model_rows(hub_cache_dirs=[get_settings().model_cache / "hub", None])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<15} {'dim':>5} {'px':>4}  {'loader':<12} {'available':<9}  model id / note")
    for row in rows:
        note = row.get("why_not") or ""
        if row.get("no_retrieval_quality"):
            note = "random weights: no retrieval quality"
        print(f"{row['name']:<15} {row['dim']:>5} {row['image_size']:>4}  {row['loader']:<12} "
              f"{'yes' if row['available'] else 'no':<9}  {row['model_id']}" + (f"  ({note})" if note else ""))
    return 0


def cmd_embed_server(args) -> int:
    from medvec.serve.embed_server import serve
    from medvec.embedders.factory import embedder_config, local_config, open_embedder

    logging.getLogger("medvec.serve.embed_server").setLevel(logging.INFO)  # its startup line is for the operator
    settings = get_settings()
    config = local_config(embedder_config(settings, args.model or settings.model, kind="local",
                                                device=args.device))
    key = settings.embed_server_key
    with open_embedder(config) as embedder:
        serve(embedder, args.host, args.port, max_batch=args.max_batch, api_key=key and key.get_secret_value())
    return 0


# --- search, stats, reset ------------------------------------------------------------------------

def _filters(args):
    from medvec.search.images import Filters

    return Filters.of(view=args.view, modality=args.modality, split=args.split, labels=args.label)


def _run_search(args, ask) -> int:
    """Run one query and print it; bad input is a plain message and exit code 2."""
    from medvec.search.images import NotIndexed, SearchInputError
    from medvec.search.configured import open_search

    search = open_search(get_settings(), args.model)
    try:
        result = ask(search)
    except (SearchInputError, NotIndexed) as exc:
        print(f"medvec: {exc}", file=sys.stderr)
        return 2
    finally:
        search.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"{len(result.hits)} hit(s) from {result.table} (v{result.table_version}) via {result.route} "
          f"in {result.took_ms:.1f} ms")
    print(f"{'#':>3}  {'score':>7}  {'image_id':<40} {'view':<8} {'split':<6} labels")
    for hit in result.hits:
        meta = hit.metadata
        print(f"{hit.rank:>3}  {hit.score:>7.4f}  {hit.image_id[:40]:<40} {meta.get('view_position') or '-':<8} "
              f"{meta.get('split') or '-':<6} {', '.join(meta.get('labels') or []) or '-'}")
    return 0


def _run_report_search(args, ask) -> int:
    from medvec.search.reports import NoReports, ReportSearch, mark_text
    from medvec.search.images import NotIndexed, SearchInputError
    from medvec.search.configured import open_search

    search = open_search(get_settings(), args.model)
    try:
        result = ask(ReportSearch(search))
    except (SearchInputError, NotIndexed, NoReports) as exc:
        print(f"medvec: {exc}", file=sys.stderr)
        return 2
    finally:
        search.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "studies" in result:
        print(f"{len(result['studies'])} report(s) ({result['query']['mode']}) and {len(result['images'])} image(s) "
              f"in {result['took_ms']:.1f} ms")
        for rank, study in enumerate(result["studies"], start=1):
            print(f"{rank:>3}. {study['score']:.4f}  study {study['study_key']} ({study['layout']}, "
                  f"{'+'.join(study['routes'])})  {', '.join(study['labels']) or '-'}")
            print(f"       {mark_text(study['snippet'], study['highlights'])}")
            for image in study["images"]:
                print(f"       image {image['image_id'][:44]} {image.get('view_position') or '-'}")
        print("images (direct and through reports):")
        for image in result["images"]:
            print(f"{image['rank']:>3}. {image['score']:.4f}  {image['image_id'][:44]:<44} "
                  f"{'+'.join(image['routes']):<13} {', '.join(image.get('labels') or []) or '-'}")
        return 0
    print(f"{len(result['hits'])} similar image(s) via {result['route']} in {result['took_ms']:.1f} ms")
    for hit in result["hits"]:
        print(f"{hit['rank']:>3}. {hit['score']:.4f}  {hit['image_id'][:44]:<44} {', '.join(hit.get('labels') or []) or '-'}")
        for report in hit["reports"]:
            print(f"       study {report['study_key']}: {report['impression'] or report['findings']}")
    return 0


def cmd_search(args) -> int:
    if args.reports:
        if args.image or not args.text:
            print("medvec search --reports: give TEXT (image queries: medvec similar IMAGE_ID --reports)",
                  file=sys.stderr)
            return 2
        return _run_report_search(args, lambda s: s.search(" ".join(args.text), args.k, _filters(args), args.mode))
    if bool(args.text) == bool(args.image):
        print("medvec search: give either TEXT or --image FILE", file=sys.stderr)
        return 2
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            print(f"medvec search: no file {path}", file=sys.stderr)
            return 2
        return _run_search(args, lambda s: s.search_image(path.read_bytes(), args.k, _filters(args), filename=path.name))
    return _run_search(args, lambda s: s.search_text(" ".join(args.text), args.k, _filters(args)))


def cmd_similar(args) -> int:
    if args.reports:
        return _run_report_search(args, lambda s: s.similar_with_reports(args.image_id, args.k, _filters(args)))
    return _run_search(args, lambda s: s.similar(args.image_id, args.k, _filters(args)))


def cmd_stats(args) -> int:
    from medvec.tables.inventory import collection_stats

    settings = get_settings()
    stats = collection_stats(settings.lancedb_uri, settings.home)
    if args.json:
        print(json.dumps(stats, indent=2))
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


def cmd_reset(args) -> int:
    from medvec.tables.inventory import medvec_tables, reset_tables
    from medvec.tables.database import connect

    settings = get_settings()
    names = medvec_tables(connect(settings.lancedb_uri))
    if not args.yes:
        print(f"medvec reset drops {len(names)} table(s) at {settings.lancedb_uri}: {', '.join(names) or 'none'}.\n"
              "Nothing was changed. Run `medvec reset --yes` to drop them.", file=sys.stderr)
        return 2
    dropped = reset_tables(settings.lancedb_uri, settings.home)
    print(f"dropped {len(dropped)} table(s): {', '.join(dropped) or 'none'}. Batches and WebP files under "
          f"{settings.home} are kept; `medvec ingest` embeds them again.")
    return 0


def cmd_eval(args) -> int:
    from medvec.tables import database
    from medvec.evaluation.retrieval import evaluate_models, markdown_table, per_finding_table, save_report
    from medvec.search.configured import eval_targets

    settings = get_settings()
    targets = eval_targets(settings, args.model)
    if not targets:
        print("medvec eval: no model tables yet: run `medvec ingest SOURCE` (or `make demo`) first", file=sys.stderr)
        return 2
    progress = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    result = evaluate_models(database.connect(settings.lancedb_uri), targets, split=args.split,
                             policy=args.uncertain, progress=progress)
    paths = save_report(settings.home, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\nretrieval evaluation, {result['split'] or 'all'} images, uncertain labels: {result['uncertain_policy']}\n")
    print(markdown_table(result))
    for section in result["models"]:
        if "error" in section:
            print(f"\n{section['model']}: {section['error']}")
            continue
        if section["image_to_image"].get("note"):
            print(f"\n{section['model']}: image → image: {section['image_to_image']['note']}")
        if section.get("text_to_image_skipped"):
            print(f"\n{section['model']}: text → image skipped ({section['text_to_image_skipped']})")
        sources = section.get("label_sources") or {}
        if sources.get("reports"):
            print(f"\n{section['model']}: {sources['reports']} image(s) labelled from their reports "
                  f"({sources.get('given', 0)} from the labels CSV)")
        agreement = section.get("report_label_agreement")
        if agreement:
            print(f"\n{section['model']}: report-read labels match the given labels exactly for "
                  f"{agreement['exact_match']:.0%} of {agreement['images']} image(s)")
        table = per_finding_table(section)
        if table:
            print(f"\n{section['model']}, text → image per finding:\n{table}")
        if section["model"].startswith("tiny-"):
            print(f"({section['model']} has random weights: these numbers show the plumbing, not a model)")
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    return 0


def cmd_serve(args) -> int:
    from medvec.serve.http_api import serve

    settings = get_settings()
    return serve(settings, host=args.host, port=args.port, model=args.model,
                 token=settings.api_token and settings.api_token.get_secret_value())


def cmd_mcp(args) -> int:
    from medvec.serve.mcp import run_stdio

    return run_stdio(get_settings(), model=args.model)


# --- backfill ------------------------------------------------------------------------------------

def cmd_backfill(args) -> int:
    """Re-run chosen batches from their manifests, in process: named ones, all, or the failed ones."""
    settings = get_settings()
    _ensure_dagster_home(settings)
    import dagster as dg

    from medvec import progress
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
        print(f"medvec backfill: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        if args.json:
            print(json.dumps({"dry_run": True, "batches": chosen, "status": status, "dead_runs": reaped}, indent=2))
            return 0
        print(f"would re-run {len(chosen)} of {len(known)} batch(es)")
        for batch in chosen:
            print(f"  {batch}" + (f"  ({status[batch]})" if status else ""))
        if reaped:
            print(f"{len(reaped)} run(s) of a killed medvec command look in progress; a real backfill marks them "
                  "failed first (their batches then count as failed)")
        return 0
    if not chosen and not args.json:
        print(f"nothing to re-run: none of {len(known)} batch(es) failed")
        return 0
    bars: dict[str, object] = {}

    def on_progress(what: str, done: int, total: int) -> None:
        bar = bars.get(what)
        if bar is None:  # batches report images; model downloads report bytes
            bar = bars[what] = _bar(total, what, not args.json, "img" if what.startswith(("batch", "embed")) else "B")
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    with progress.listening(on_progress):
        summary = backfill(settings, chosen, instance=instance, per_run=args.per_run, embed=not args.no_embed,
                           refresh=not args.no_refresh, normalize_config={"workers": args.workers})
    summary.reaped_runs = reaped
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
        return 0 if not summary.failed_runs else 1
    runs = ", ".join("[" + " ".join(group) + "]" for group in summary.embed_runs) or "none"
    print(f"re-ran {len(chosen)} batch(es) in {summary.seconds:.1f}s: {summary.ok} image(s) ok, {summary.errors} "
          f"error(s); {summary.normalize_runs} normalise run(s), embedding runs {runs}")
    if summary.model:
        print(f"  {summary.embedded} vector(s) from {summary.model} in {summary.table}"
              + ("; search assets refreshed" if summary.indexed else ""))
    if reaped:
        print(f"  {len(reaped)} run(s) of a killed medvec command marked failed and their pool slots freed")
    if summary.failed_runs:
        print(f"runs failed for {', '.join(summary.failed_runs)}: see `make dagster` (Runs) for why")
        return 1
    return 0


def cmd_bundle(args) -> int:
    from medvec.bundle import BundleError, BundleOptions, build_bundle
    from medvec.bundle.build import latest_evaluation
    from medvec.bundle.export_onnx import ExportError
    from medvec.bundle.tokenizer_export import TokenizerNotSupported
    from medvec.embedders.base import EmbedderError
    from medvec.embedders.factory import embedder_config, local_config, open_embedder
    from medvec.search.images import NotIndexed
    from medvec.search.configured import open_search, search_model_name

    settings = get_settings()
    name = search_model_name(settings, args.model)
    search = open_search(settings, name)
    report, plot = latest_evaluation(settings.home)
    progress = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    options = BundleOptions(precision=args.precision, thumbnails=not args.no_thumbnails)
    try:
        # The text tower is exported from a local copy of the model, whatever embeds the table.
        with open_embedder(local_config(embedder_config(settings, name, kind="local"), device="cpu")) as embedder:
            summary = build_bundle(search, embedder, args.out_dir, home=settings.home, eval_report=report,
                                   eval_plot=plot, options=options, progress=progress)
    except (BundleError, NotIndexed, ExportError, TokenizerNotSupported, EmbedderError) as exc:
        print(f"medvec bundle: {exc}", file=sys.stderr)
        return 2
    finally:
        search.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    sizes, checks = summary["sizes"], summary["checks"]
    packing = checks["packing"][summary["precision"]]
    print(f"bundle of {summary['images']} image(s) from {summary['table']} v{summary['table_version']} in "
          f"{summary['out_dir']}: {sizes['total'] / 1e6:.1f} MB (runtime {sizes['runtime'] / 1e6:.1f}, text model "
          f"{sizes['text_model'] / 1e6:.1f}, vectors {sizes['vectors'] / 1e6:.2f}, thumbnails {sizes['thumbs'] / 1e6:.1f})")
    tokenizer = checks["tokenizer"]
    print(f"  checks: ONNX vs PyTorch lowest cosine {checks['onnx']['min_cosine']}; tokenizer "
          + (f"{tokenizer['matching']}/{tokenizer['prompts']} prompts equal" if tokenizer["checked"]
             else f"not checked ({tokenizer['reason']})")
          + f"; {summary['precision']} vectors recall@10 {packing['text_queries']['recall']} (text), "
            f"{packing['image_queries']['recall']} (images)")
    if report is None:
        print("  no evaluation report: run `medvec eval` and build again for the metrics tab")
    print(f"serve it with any static file server, e.g. `python3 -m http.server -d {summary['out_dir']} 8000`, "
          "then open http://127.0.0.1:8000/")
    return 0


# --- sample data and demo ----------------------------------------------------------------------

def cmd_sample_data(args) -> int:
    from medvec.sample.writer import write_sample_data

    with _bar(0, "writing sample data", True) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = write_sample_data(args.dir, count=args.count, progress=on_progress)
    labels = ", ".join(f"{name}: {n}" for name, n in sorted(summary.by_label.items()))
    print(f"wrote {len(summary.files)} file(s) to {summary.out_dir} ({labels}); labels in {summary.labels_csv}")
    return 0


def cmd_demo(args) -> int:
    """Sample data → batches → WebP → embeddings → indexes, offline, then a few searches."""
    settings = get_settings()
    sample_dir = local_state_dir(settings) / "sample_data"
    if not (sample_dir / "labels.csv").exists():
        cmd_sample_data(argparse.Namespace(dir=str(sample_dir), count=args.count))
    settings = _choose_demo_model(settings)
    ingest_args = argparse.Namespace(source=str(sample_dir), limit=None, batch_size=args.batch_size, no_embed=False,
                                     metadata=None, dry_run=False, json=False, workers=0, size=512,
                                     thumb_size=256, pad_square=False, window="header", allow_tag=[],
                                     allow_column=[])
    started = time.perf_counter()
    code = cmd_ingest(ingest_args, settings)
    print("(the sample holds one truncated DICOM and one text file on purpose: 2 errors are expected)")
    _print_collection(settings)
    searched = _demo_searches(settings, sample_dir)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f}s. Next steps:")
    print("  search in the browser:                  medvec serve   then open http://127.0.0.1:8080")
    print("  search from the terminal:               medvec search \"pleural effusion\" --view PA")
    print("  search reports and images together:     medvec search \"small left effusion\" --reports")
    print("  measure retrieval:                      medvec eval --split all")
    print(f"  browse the asset graph and these runs:  make dagster   (DAGSTER_HOME={_ensure_dagster_home(settings)})")
    print("  ingest your own files:                  medvec ingest /path/to/dicoms --limit 100")
    return code or searched


def _demo_searches(settings: Settings, sample_dir: Path) -> int:
    """A few searches of each kind, printed, so the demo ends where a user starts."""
    from medvec.search.images import Filters, NotIndexed
    from medvec.search.configured import open_search

    search = open_search(settings)
    try:
        queries = [("text (precomputed)", lambda: search.search_text("pleural effusion", 3)),
                   ("text, PA only", lambda: search.search_text("cardiomegaly", 3, Filters.of(view="PA"))),
                   ("text (encoded now)", lambda: search.search_text("small left apical pneumothorax", 3))]
        dicom = next(iter(sorted((sample_dir / "synthetic").rglob("*.dcm"))), None)
        if dicom is not None:
            queries.append((f"image {dicom.name}",
                            lambda: search.search_image(dicom.read_bytes(), 3, filename=dicom.name)))
        print(f"\nsearches over {search.table_name}:")
        first = None
        for title, ask in queries:
            result = ask()
            first = first or result.hits[0].image_id
            _print_hits(title, result)
        if first:
            _print_hits(f"similar to {first[:24]}…", search.similar(first, 3))
        _demo_report_search(search)
    except NotIndexed as exc:
        print(f"no search: {exc}")
        return 1
    finally:
        search.close()
    return 0


def _demo_report_search(search) -> None:
    from medvec.search.reports import NoReports, ReportSearch, mark_text

    try:
        result = ReportSearch(search).search("small left effusion", 2)
    except NoReports:
        return
    print(f"  reports and images for \"small left effusion\" (hybrid BM25 + vector): {result['took_ms']:.1f} ms")
    for study in result["studies"]:
        print(f"    study {study['study_key']} ({study['layout']}): {mark_text(study['snippet'], study['highlights'])}"
              f"  [{len(study['images'])} image(s)]")


def _print_hits(title: str, result) -> None:
    print(f"  {title}: {result.route}, {result.took_ms:.1f} ms")
    for hit in result.hits:
        labels = ", ".join(hit.metadata.get("labels") or []) or "-"
        print(f"    {hit.rank}. {hit.score:.3f}  {hit.image_id[:44]:<44} {hit.metadata.get('view_position') or '-':<8}"
              f" {labels}")


def _choose_demo_model(settings: Settings) -> Settings:
    """The configured model when this machine has it, else tiny-siglip, said in plain words."""
    from medvec.models.registry import model_rows

    rows = {row["name"]: row for row in model_rows(hub_cache_dirs=[settings.model_cache / "hub", None])}
    row = rows.get(settings.model)
    if settings.embedder == "nim" or (row and row["available"] and not row.get("no_retrieval_quality")):
        print(f"embedding with {settings.model}")
        return settings
    if settings.model != "tiny-siglip":
        reason = row["why_not"] if row else "not a registry model"
        print(f"{settings.model} is not available here ({reason}).")
    print("embedding with tiny-siglip: a small model with RANDOM weights, built offline. It exercises the whole "
          "pipeline but its search results mean nothing; set MEDVEC_MODEL=siglip-base (or another model from "
          "`medvec models`) where its files can be downloaded for real retrieval.")
    return settings.model_copy(update={"model": "tiny-siglip"})


def _print_collection(settings: Settings) -> None:
    """What the home now holds, by view, label and window, plus a contact sheet to look at."""
    from collections import Counter

    from medvec.ingest.batches import list_batches, load_batch_records
    from medvec.imaging.webp import contact_sheet

    records = [r for batch in list_batches(settings.home) for r in load_batch_records(settings.home, batch)]
    if not records:
        return
    views = Counter(r.view_position or "unknown" for r in records)
    labels = Counter(label for r in records for label in (r.labels or ["(unlabelled)"]))
    windows = Counter(r.window_source or "unknown" for r in records)
    syntaxes = Counter((r.transfer_syntax and _syntax_name(r.transfer_syntax)) or r.source_format for r in records)
    print(f"\n{len(records)} image(s) in {settings.home}:")
    for title, counts in (("view", views), ("label", labels), ("grey window", windows), ("encoding", syntaxes)):
        print(f"  by {title:<12} " + ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
    sheet = contact_sheet([(settings.home / r.thumb_uri).read_bytes() for r in records[:48]], columns=12)
    if sheet:
        path = settings.home / "contact_sheet.png"
        path.write_bytes(sheet)
        print(f"  contact sheet:  {path}")


def _syntax_name(uid: str) -> str:
    import pydicom.uid

    return pydicom.uid.UID(uid).name


# --- parser --------------------------------------------------------------------------------------

def _add_render_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="long side of the viewing WebP in px (default 512)")
    parser.add_argument("--thumb-size", type=int, default=256, help="long side of the thumbnail (default 256)")
    parser.add_argument("--pad-square", action="store_true", help="pad to a square before resizing")
    parser.add_argument("--window", choices=("header", "percentile"), default="header",
                        help="grey window: the file's own (default) or always a robust percentile window")
    parser.add_argument("--allow-tag", action="append", default=[], metavar="KEYWORD",
                        help="also keep this DICOM attribute (e.g. StationName); identifying tags only if you must")
    parser.add_argument("--allow-column", action="append", default=[], metavar="NAME",
                        help="keep this metadata-CSV column even though its name looks identifying")


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    parser.add_argument("--view", action="append", help="only this view position (PA, AP, LATERAL, ...); repeatable")
    parser.add_argument("--label", action="append", help="only images with this finding; repeatable (any of)")
    parser.add_argument("--modality", action="append", help="only this modality (CR, DX, ...)")
    parser.add_argument("--split", action="append", help="only this split (train, validate, test)")
    parser.add_argument("--model", help="which model's table (default: $MEDVEC_MODEL)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--reports", action="store_true",
                        help="search the reports too: studies with report snippets, images found both ways")
    parser.add_argument("--mode", choices=("hybrid", "bm25", "vector"), default="hybrid",
                        help="report ranking with --reports (default hybrid: BM25 and vector, rank-fused)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medvec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("normalize", help="normalise DICOM/PNG/JPEG/TIFF files to WebP (no Dagster, no batches)")
    p.add_argument("inputs", nargs="+", help="files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metadata", help="metadata CSV mapping files to labels, view, split, patient")
    p.add_argument("--json", action="store_true", help="print records and errors as JSON")
    _add_render_options(p)
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("ingest", help="open batches for new files in SOURCE and materialise them in process")
    p.add_argument("source", nargs="?", help="folder or s3://bucket/prefix (default: $MEDVEC_SOURCE)")
    p.add_argument("--limit", type=int, help="take at most N new files")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files per batch (default 2000)")
    p.add_argument("--metadata", help="metadata CSV (default: labels.csv or metadata.csv at the source root)")
    p.add_argument("--dry-run", action="store_true", help="list the batches that would open; change nothing")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--no-embed", action="store_true", help="normalise only; do not embed")
    p.add_argument("--json", action="store_true", help="print one summary object")
    _add_render_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("models", help="list known embedding models and whether this machine can run them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed-server", help="serve a local model over the NIM embeddings protocol")
    p.add_argument("--model", help="registry name or Hugging Face id (default: $MEDVEC_MODEL)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 to serve others)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch", type=int, default=64)
    p.set_defaults(func=cmd_embed_server)

    p = sub.add_parser("search", help="text → image or image → image search over a model's table")
    p.add_argument("text", nargs="*", help="what to look for, e.g. 'left pleural effusion'")
    p.add_argument("--image", help="a DICOM, PNG or JPEG to search with instead of text")
    _add_search_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", help="the images nearest to a stored image")
    p.add_argument("image_id")
    _add_search_options(p)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("stats", help="images by view and modality, subjects, studies, errors, models and tables")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("reset", help="drop Medvec's LanceDB tables (only with --yes)")
    p.add_argument("--yes", action="store_true", help="really drop them")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("eval", help="retrieval evaluation: Recall@K, MRR, mAP per finding and per model")
    p.add_argument("--model", action="append", help="registry name; repeat to compare (default: every model table)")
    p.add_argument("--split", default="test", help="split to evaluate, or 'all' (default test; all when no splits)")
    p.add_argument("--uncertain", choices=("exclude", "positive", "negative"), default="exclude",
                   help="what CheXpert's uncertain (-1) labels mean (default: exclude from that finding)")
    p.add_argument("--json", action="store_true", help="print the report (schema medvec.eval/1)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="HTTP API and web page for search")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("mcp", help="MCP server on stdio with search tools for assistants")
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.set_defaults(func=cmd_mcp)

    p = sub.add_parser("backfill", help="re-run batches from their manifests: named ones, all, or the failed ones")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--batches", nargs="+", metavar="BATCH", help="these batches (`medvec backfill --all --dry-run` lists them)")
    which.add_argument("--all", action="store_true", help="every batch")
    which.add_argument("--failed", action="store_true", help="batches whose last run failed or never finished")
    p.add_argument("--per-run", type=int, default=8, help="batches per embedding run (default 8; the model loads once)")
    p.add_argument("--no-embed", action="store_true", help="normalise only")
    p.add_argument("--no-refresh", action="store_true", help="do not refresh the search assets afterwards")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="list the batches that would re-run; change nothing")
    p.add_argument("--json", action="store_true", help="print one summary object")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("bundle", help="a static folder that searches a model's table in the browser, no server")
    p.add_argument("out_dir", help="folder to write (replaced whole; must be new, empty or an earlier bundle)")
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.add_argument("--precision", choices=("float16", "int8"), default="float16",
                   help="how the image vectors are packed (default float16; int8 is half the size, lower recall)")
    p.add_argument("--no-thumbnails", action="store_true", help="leave the thumbnails out")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("sample-data", help="write the offline sample dataset (real WG04 + synthetic chest DICOM)")
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=36, help="synthetic chest images (default 36)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("demo", help="sample data → WebP → embeddings → search, offline")
    p.add_argument("--count", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    # Dagster marks BackfillPolicy as beta on every import; users of the CLI cannot act on it.
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad variable: its one line, not a traceback
        print(f"medvec: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
