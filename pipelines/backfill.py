"""`medvec backfill`: re-run chosen batches from their manifests in this process, as a backfill from
the UI would: one run per batch to normalise, several batches per run to embed (the model loads
once), then one search refresh. Also the run bookkeeping the sensors share: whether the model is
ready, each batch's status, and runs whose in-process medvec command died.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import dagster as dg

from assets.embeddings import embedding_model, image_embeddings
from assets.reports import report_embeddings, report_records
from assets.ingest import normalized_images, source_manifest
from assets.search import fallback_queries, image_index, similar_images
from medvec.ingest.backfill_plan import FAILED, IN_PROGRESS, MATERIALIZED, MISSING, combine_status, group_runs
from medvec.ingest.batches import load_batch_errors, load_batch_records
from medvec.tables.images import image_table_name
from medvec.settings import Settings
from medvec.storage import HomePath
from assets.partitions import batch_partitions
from pipelines.jobs import embed_batches_job, embedding_model_job, in_process, ingest_job, search_refresh_job
from resources import home_resources
from resources.embedders import EmbedderResource, embedder_resource
from resources.home_io_manager import stored_value

LAUNCHED_BY_TAG = "medvec/launched_by"  # runs a medvec command executed in its own process
PROCESS_TAG = "medvec/process"  # "<host>/<pid>:<start time>" of that process
#: Per batch: the first three need no model; the last two embed images and reports.
BATCH_ASSETS = [source_manifest, normalized_images, report_records, image_embeddings, report_embeddings]
UNEMBEDDED = 3
SEARCH_ASSETS = [image_index, fallback_queries, similar_images]
#: In-process runs the CLI makes are logged to the run log only; the CLI prints its own summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

# --- runs of processes that died -----------------------------------------------------------------

def _process_identity(pid: int) -> str | None:
    """pid plus the process's start time (Linux), so a recycled pid is not mistaken for the original."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return f"{pid}:{handle.read().rsplit(')', 1)[1].split()[19]}"
    except FileNotFoundError:
        return None
    except (OSError, IndexError):  # no /proc (macOS): the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)


def process_tags(command: str) -> dict[str, str]:
    """Tags for runs executed in this process, so a later command can tell if it died."""
    return {LAUNCHED_BY_TAG: command,
            PROCESS_TAG: f"{socket.gethostname()}/{_process_identity(os.getpid()) or os.getpid()}"}


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Unfinished runs that a medvec process on this machine executed in process, and that process is gone."""
    host = socket.gethostname()
    dead = []
    unfinished = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished)):
        run_host, _, identity = record.dagster_run.tags.get(PROCESS_TAG, "").rpartition("/")
        if run_host != host or not identity:
            continue
        alive = _process_identity(int(identity.split(":")[0]))
        if alive != identity and not (alive and ":" not in identity):
            dead.append(record.dagster_run)
    return dead


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs whose medvec process on this machine is gone, and free their
    pool slots.

    A run executed in process (CLI) by a process that was killed stays STARTED forever and keeps its
    `gpu` pool slot, so with a pool limit every later embedding step would wait for it. Dagster's run
    monitoring does this for runs its launcher started; nothing does it for in-process runs.
    """
    reaped = []
    for run in dead_runs(instance):
        instance.report_run_failed(run, message="the medvec process that ran this run in process is gone (killed "
                                                "or crashed); marked failed by a later medvec command")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped


# --- what the instance knows -----------------------------------------------------------------------

def model_ready(instance: dg.DagsterInstance, embedder: EmbedderResource, home: HomePath) -> bool:
    """Whether embedding_model's latest materialisation is the configured model, served the configured
    way (the check image_embeddings itself makes, plus local vs NIM), and its value is in the home where
    batch runs load it from."""
    event = instance.get_latest_materialization_event(embedding_model.key)
    if event is None or event.asset_materialization is None:
        return False
    if not stored_value(home, embedding_model.key).is_file():
        return False
    config = embedder.config()
    spec, loader = config.spec, config.loader
    found = {key: getattr(value, "value", None) for key, value in event.asset_materialization.metadata.items()}
    return (found.get("model"), found.get("model_id"), found.get("loader")) == (spec.name, spec.model_id, loader)


def batch_status(instance: dg.DagsterInstance, batches: list[str], embed: bool = True) -> dict[str, str]:
    """materialized | failed | in_progress | missing per batch, over its batch assets."""
    if not batches:
        return {}
    words = {dg.AssetPartitionStatus.MATERIALIZED: MATERIALIZED, dg.AssetPartitionStatus.FAILED: FAILED,
             dg.AssetPartitionStatus.IN_PROGRESS: IN_PROGRESS}
    assets = BATCH_ASSETS if embed else BATCH_ASSETS[:UNEMBEDDED]
    known = set(instance.get_dynamic_partitions(batch_partitions.name))
    keys = [b for b in batches if b in known]
    per_asset = [instance.get_status_by_partition(a.key, keys, batch_partitions) or {} for a in assets]
    return {b: combine_status([words.get(status.get(b), MISSING) for status in per_asset]) for b in batches}


# --- the backfill ------------------------------------------------------------------------------------

@dataclass
class BackfillSummary:
    batches: list[str]
    normalize_runs: int = 0
    embed_runs: list[list[str]] = field(default_factory=list)  # batches per embedding run
    failed_runs: list[str] = field(default_factory=list)  # batch names, "embedding_model", "search_refresh"
    ok: int = 0
    errors: int = 0
    embedded: int = 0  # vectors the model computed
    embed_skipped: int = 0  # images already in the model's table with the same content and revision
    model: str | None = None
    table: str | None = None
    indexed: bool = False
    reaped_runs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The documented `medvec backfill --json` object."""
        return {"batches": self.batches, "normalize_runs": self.normalize_runs, "embed_runs": self.embed_runs,
                "failed_runs": self.failed_runs, "ok": self.ok, "errors": self.errors, "embedded": self.embedded,
                "embed_skipped": self.embed_skipped, "model": self.model, "table": self.table, "indexed": self.indexed,
                "reaped_runs": self.reaped_runs, "seconds": round(self.seconds, 2)}


def backfill(settings: Settings, batches: list[str], *, instance: dg.DagsterInstance,
             embedder: EmbedderResource | None = None, per_run: int = 8, embed: bool = True, refresh: bool = True,
             normalize_config: dict | None = None) -> BackfillSummary:
    """Re-run `batches` from their manifests: normalise each (unchanged files are skipped by hash, so
    outputs are identical), embed them in runs of up to `per_run` neighbouring batches, refresh search."""
    started = time.perf_counter()
    summary = BackfillSummary(batches=list(batches))
    instance.add_dynamic_partitions(batch_partitions.name, list(batches))  # existing ones are left as they are
    resources: dict = home_resources(settings)
    tags = process_tags("medvec backfill")
    run_config = {"ops": {"normalized_images": {"config": normalize_config or {}}}, **QUIET}
    normalized = []
    normalize_job = in_process(ingest_job, resources)
    for batch in batches:
        result = normalize_job.execute_in_process(
            partition_key=batch, asset_selection=[a.key for a in BATCH_ASSETS[:UNEMBEDDED]], instance=instance,
            run_config=run_config, raise_on_error=False, tags=tags)
        summary.normalize_runs += 1
        if result.success:
            normalized.append(batch)
        else:
            summary.failed_runs.append(batch)
        summary.ok += len(load_batch_records(settings.home, batch))
        summary.errors += len(load_batch_errors(settings.home, batch))
    if embed and normalized:
        embedder = embedder or embedder_resource(settings)
        resources["embedder"] = embedder
        spec = embedder.spec()
        summary.model, summary.table = spec.name, image_table_name(spec.slug)
        if not model_ready(instance, embedder, settings.home) and not resolve_model(instance, resources, tags).success:
            summary.failed_runs.append("embedding_model")
            normalized = []
        _embed(summary, normalized, instance, resources, tags, per_run)
    if refresh and summary.embedded:
        summary.indexed = refresh_search(instance, resources, tags)
        if not summary.indexed:
            summary.failed_runs.append("search_refresh")
    summary.seconds = time.perf_counter() - started
    return summary


def resolve_model(instance: dg.DagsterInstance, resources: dict, tags: dict) -> dg.ExecuteInProcessResult:
    """One embedding_model_job run: the configured model resolved to files (or the NIM probed)."""
    return in_process(embedding_model_job, resources).execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False, tags=tags)


def refresh_search(instance: dg.DagsterInstance, resources: dict, tags: dict) -> bool:
    """One search_refresh_job run (index, fallbacks, neighbours and their checks) over what the table holds now."""
    return in_process(search_refresh_job, resources).execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False, tags=tags).success


def _embed(summary: BackfillSummary, batches: list[str], instance: dg.DagsterInstance, resources: dict,
           tags: dict, per_run: int) -> None:
    if not batches:
        return
    job = in_process(embed_batches_job, resources)
    for group in group_runs(batches, instance.get_dynamic_partitions(batch_partitions.name), per_run):
        summary.embed_runs.append(group)
        range_tags = {"dagster/asset_partition_range_start": group[0], "dagster/asset_partition_range_end": group[-1]}
        result = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False,
                                        tags={**tags, **range_tags})
        if not result.success:
            summary.failed_runs.extend(group)
            continue
        # One materialisation per batch, all carrying the run's totals.
        metadata = result.asset_materializations_for_node("image_embeddings")[0].metadata
        summary.embedded += metadata["embedded"].value
        summary.embed_skipped += metadata["skipped"].value
