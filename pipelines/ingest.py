"""`medvec ingest`: open batches for a source's new files and materialise them in process:
normalise, then (unless told not to) resolve the model once and embed every batch into LanceDB.

Runs go into the Dagster instance at $DAGSTER_HOME, so `dagster dev` shows them afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg

from medvec import progress
from medvec.ingest.batches import (BatchManifest, batch_opening_lock, is_normalized, list_batches, load_batch_errors,
                            load_batch_records, load_manifest, plan_batches, write_manifest)
from medvec.tables.images import image_table_name
from medvec.reports.tables import load_batch_reports
from medvec.reports.parse import is_report_file
from medvec.tables.records import IngestError
from medvec.phi import require_pseudonym_key
from medvec.settings import DEFAULT_BATCH_SIZE, Settings
from medvec.datasets.adapters import choose_metadata
from medvec.sources import open_source
from pipelines.backfill import (BATCH_ASSETS, QUIET, UNEMBEDDED, process_tags, reap_dead_runs, refresh_search,
                                resolve_model)
from pipelines.jobs import in_process, ingest_job
from assets.partitions import batch_partitions
from resources import home_resources
from resources.embedders import EmbedderResource, embedder_resource


@dataclass
class IngestSummary:
    source: str
    dry_run: bool
    batches: list[str] = field(default_factory=list)
    files: int = 0
    ok: int = 0
    skipped: int = 0
    errors: list[IngestError] = field(default_factory=list)
    seconds: float = 0.0
    metadata_csv: str | None = None
    dataset: str | None = None  # the dataset adapter that read the labels (medvec.datasets.adapters)
    failed_runs: list[str] = field(default_factory=list)
    model: str | None = None  # None when embedding was skipped
    table: str | None = None
    embedded: int = 0  # vectors the model computed
    embed_skipped: int = 0  # images already in the model's table with the same content and revision
    indexed: bool = False  # image_index, fallback_queries and similar_images refreshed
    report_files: int = 0  # report files among `files` (MIMIC .txt, Open-I .xml)
    reports: int = 0  # reports stored (Indiana CSV rows included)

    def to_json(self) -> dict:
        """The documented `medvec ingest --json` object."""
        return {"source": self.source, "dry_run": self.dry_run, "batches": self.batches, "files": self.files,
                "ok": self.ok, "errors": len(self.errors), "skipped": self.skipped,
                "seconds": round(self.seconds, 2), "metadata_csv": self.metadata_csv, "dataset": self.dataset,
                "failed_runs": self.failed_runs, "model": self.model, "table": self.table,
                "embedded": self.embedded, "embed_skipped": self.embed_skipped, "indexed": self.indexed, "report_files": self.report_files, "reports": self.reports, "error_records": [e.to_row() for e in self.errors]}


def pending_batches(settings: Settings, manifests: list[BatchManifest], source_root: str,
                    embedded: set[str] | None = None) -> list[BatchManifest]:
    """Batches of this source that were opened but never normalised (an interrupted ingest) or, when
    `embedded` is given, never embedded (the model or NIM failed last time)."""
    return [m for m in manifests if m.source == source_root and (
        not is_normalized(settings.home, m.batch) or (embedded is not None and m.batch not in embedded))]


def embedded_batches(settings: Settings, model_slug: str) -> set[str]:
    """Batches already in this model's table, plus batches with no image to embed. Read from the
    table rather than Dagster's history, so another model or a `medvec reset` re-embeds."""
    from medvec.tables import database

    done = {b for b in list_batches(settings.home) if is_normalized(settings.home, b)
            and not load_batch_records(settings.home, b)}
    table = database.open_table_if_exists(database.connect(settings.lancedb_uri), image_table_name(model_slug))
    if table is not None:
        done |= set(table.search().select(["batch"]).limit(None).to_arrow().column("batch").unique().to_pylist())
    return done


def ingest(source_root: str, settings: Settings, *, limit: int | None = None,
           batch_size: int = DEFAULT_BATCH_SIZE, metadata_csv: str | None = None, dry_run: bool = False,
           workers: int = 0, instance: dg.DagsterInstance | None = None,
           normalize_config: dict | None = None, embed: bool = True,
           embedder: EmbedderResource | None = None, dataset: str | None = None) -> IngestSummary:
    started = time.perf_counter()
    source = open_source(source_root, settings.s3_endpoint_url)
    dataset, metadata_csv = choose_metadata(source, dataset, metadata_csv)
    summary = IngestSummary(source=source.root, dry_run=dry_run, metadata_csv=metadata_csv, dataset=dataset)
    if dry_run:
        planned = plan_batches(source, settings.home, batch_size=batch_size, limit=limit, metadata_csv=metadata_csv,
                               dataset=dataset)
        summary.batches = [m.batch for m in planned]
        summary.files = sum(len(m.files) for m in planned)
        summary.seconds = time.perf_counter() - started
        return summary

    # Real data never goes in under the public development key (MissingPseudonymKey says how to make one).
    # Runs receive the key as an EnvVar only: a key that is not in this process's environment (Settings
    # built from a dict) does not reach them, so it counts as missing here, not silently replaced.
    require_pseudonym_key("set" if settings.exported("pseudonym_key") else None, settings.allow_dev_key)
    instance = instance or dg.DagsterInstance.get()
    # A killed earlier ingest leaves its run STARTED, holding a `gpu` pool slot: free it first.
    reap_dead_runs(instance)
    if embed:
        embedder = embedder or embedder_resource(settings)
    embedded = embedded_batches(settings, embedder.spec().slug) if embed else None
    with batch_opening_lock(settings.home):
        existing = [load_manifest(settings.home, b) for b in list_batches(settings.home)]
        manifests = pending_batches(settings, existing, source.root, embedded)
        planned = plan_batches(source, settings.home, batch_size=batch_size, limit=limit, metadata_csv=metadata_csv,
                               existing=existing, dataset=dataset)
        for manifest in planned:
            write_manifest(settings.home, manifest)
            manifests.append(manifest)
    instance.add_dynamic_partitions(batch_partitions.name, [m.batch for m in manifests])
    resources = home_resources(settings)
    # The CLI prints its own summary of errors; the run log keeps every line for the UI.
    run_config = {"ops": {"normalized_images": {"config": {"workers": workers, **(normalize_config or {})}}},
                  **QUIET}
    tags = process_tags("medvec ingest")  # lets a later command tell whether this process died
    if embed and manifests:
        resources["embedder"] = embedder
        model_run = resolve_model(instance, resources, tags)
        if not model_run.success:
            summary.failed_runs.append("embedding_model")
            embed = False
        else:
            artifact = model_run.output_for_node("embedding_model")
            spec = resources["embedder"].spec()
            summary.model, summary.table = artifact.name, image_table_name(spec.slug)
    report_ids: set[str] = set()
    selection = [a.key for a in (BATCH_ASSETS if embed else BATCH_ASSETS[:UNEMBEDDED])]
    job = in_process(ingest_job, resources)
    # One Dagster run per batch: the outer bar (or log line) the CLI shows while the runs go by.
    if manifests:
        progress.report("ingest runs", 0, len(manifests))
    for number, manifest in enumerate(manifests, 1):
        result = job.execute_in_process(partition_key=manifest.batch, asset_selection=selection, instance=instance,
                                        run_config=run_config, raise_on_error=False, tags=tags)
        if not result.success:
            summary.failed_runs.append(manifest.batch)
        summary.batches.append(manifest.batch)
        summary.files += len(manifest.files)
        summary.ok += len(load_batch_records(settings.home, manifest.batch))
        summary.errors.extend(load_batch_errors(settings.home, manifest.batch))
        summary.report_files += sum(1 for f in manifest.files if is_report_file(f.uri))
        report_ids.update(r.report_id for r in load_batch_reports(settings.home, manifest.batch))
        if embed and result.success:
            [materialization] = result.asset_materializations_for_node("image_embeddings")
            summary.embedded += materialization.metadata["embedded"].value
            summary.embed_skipped += materialization.metadata["skipped"].value
        progress.report("ingest runs", number, len(manifests))
    if embed and summary.embedded:
        progress.report("refreshing the search index", 0, 1)
        summary.indexed = refresh_search(instance, resources, tags)
        progress.report("refreshing the search index", 1, 1)
        if not summary.indexed:
            summary.failed_runs.append("search_refresh")
    # An Indiana report whose images sit in two batches is read by both; the table holds it once.
    summary.reports = len(report_ids)
    summary.skipped = summary.files - summary.report_files - summary.ok - len(summary.errors)
    summary.seconds = time.perf_counter() - started
    return summary
