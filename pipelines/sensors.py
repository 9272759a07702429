"""Sensors: new downloads in a folder or an S3 prefix open batches and launch their runs, and the search
assets refresh once after a wave of batches. What to open and when to refresh is decided in
`medvec.ingest.watch`; this module turns the answers into partitions, run requests and a cursor.

Each source sensor, per tick: one bounded look at the source (`watch_source`), batches opened for the
settled new files (each marked as awaiting launch), then the launch step: partitions added and runs
requested in the same `SensorResult`. Runs need the configured model resolved first; when it is
not, the sensor requests one `embedding_model` run and launches the batches on a later tick.
"""

import os
import time

import dagster as dg

from assets.checks import CHECKS
from assets.embeddings import embedding_model, image_embeddings
from medvec.tables import database
from medvec.ingest.batches import is_normalized
from medvec.settings import Settings, get_settings
from medvec.sources import open_source
from medvec.ingest.watch import (WatchCursor, WatchOptions, awaiting_batches, clear_awaiting, refresh_decision,
                          report_changed, watch_source)
from pipelines.backfill import BATCH_ASSETS, LAUNCHED_BY_TAG, SEARCH_ASSETS, model_ready
from pipelines.jobs import FOLDER_SENSOR, S3_SENSOR, search_refresh_job
from assets.partitions import batch_partitions
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource

MODEL_RUN_TAG = "medvec/model_run"
#: Only the tick interval is fixed when the code location loads; the rest is read on every tick.
SENSOR_INTERVAL_S = WatchOptions.from_env().interval_s
#: The checks on the batch assets run in each batch's run, as they do in ingest_job.
BATCH_CHECK_KEYS = [key for check in CHECKS for key in check.check_keys
                    if key.asset_key in {a.key for a in BATCH_ASSETS}]
UNFINISHED_RUN_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]

#: The sensors' clock (seconds since the epoch). Tests advance it instead of sleeping through a quiet period.
clock = time.time


def folder_root(settings: Settings) -> str:
    """The folder incoming_folder_sensor watches: MEDVEC_SOURCE when it is a folder, else
    $MEDVEC_HOME/incoming."""
    return settings.watched_folder


def s3_root(settings: Settings) -> str | None:
    """The prefix s3_prefix_sensor watches: MEDVEC_WATCH_S3, else MEDVEC_SOURCE when it is s3://."""
    return settings.watch_s3 or (settings.source if settings.source.startswith("s3://") else None)


def _has_run(instance: dg.DagsterInstance, batch: str) -> bool:
    return bool(instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": batch}), limit=1))


def _pending_launches(instance: dg.DagsterInstance, home, launcher: str | None) -> list[str]:
    """Batches awaiting their run (`launcher`'s, or anyone's); markers of batches that have a run (from
    an earlier tick, a backfill or by hand) are cleared."""
    pending = []
    for batch in awaiting_batches(home, launcher):
        if is_normalized(home, batch) or _has_run(instance, batch):
            clear_awaiting(home, batch)
        else:
            pending.append(batch)
    return pending


def launch_batches(context: dg.SensorEvaluationContext, medvec: MedvecHomeResource, embedder: EmbedderResource,
            cursor: WatchCursor, sensor_name: str, saw_new_files: bool,
            options: WatchOptions, opened: int = 0) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for the batches awaiting this sensor (and the partitions they still need)."""
    instance = context.instance
    awaiting = _pending_launches(instance, medvec.home_path, sensor_name)
    known = set(instance.get_dynamic_partitions(batch_partitions.name))
    new_partitions = [b for b in awaiting if b not in known]
    if not awaiting and not saw_new_files:
        return [], new_partitions
    if not model_ready(instance, embedder, medvec.home_path):
        return _model_request(context, embedder.spec(), cursor, options), new_partitions
    requests = [dg.RunRequest(run_key=f"batch:{batch}", partition_key=batch,
                              asset_selection=[a.key for a in BATCH_ASSETS], asset_check_keys=BATCH_CHECK_KEYS,
                              tags={"medvec/batch": batch})
                for batch in awaiting[:options.runs_for(opened)]]
    return requests, new_partitions


def _model_request(context, spec, cursor: WatchCursor, options: WatchOptions) -> list[dg.RunRequest]:
    """One embedding_model run at a time; after a failed one, wait model_retry_s before the next."""
    in_flight = context.instance.get_run_records(
        filters=dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES, tags={MODEL_RUN_TAG: spec.name}), limit=1)
    now = clock()
    if in_flight or (cursor.model_requested_at and now - cursor.model_requested_at < options.model_retry_s):
        return []
    cursor.model_attempt += 1
    cursor.model_requested_at = now
    context.log.info(f"model {spec.name} is not resolved yet: requesting embedding_model first")
    return [dg.RunRequest(run_key=f"embedding_model:{spec.name}:{cursor.model_attempt}",
                          asset_selection=[embedding_model.key], tags={MODEL_RUN_TAG: spec.name})]


def watch_tick(context: dg.SensorEvaluationContext, medvec: MedvecHomeResource, embedder: EmbedderResource,
               root: str | None, sensor_name: str) -> dg.SensorResult:
    cursor, options = WatchCursor.from_json(context.cursor), WatchOptions.from_env()
    if root is None:
        return dg.SensorResult(skip_reason="no S3 prefix to watch: set MEDVEC_WATCH_S3=s3://bucket/prefix",
                               cursor=cursor.to_json())
    if not root.startswith("s3://") and not os.path.isdir(root):
        return dg.SensorResult(skip_reason=f"folder {root} does not exist yet", cursor=cursor.to_json())
    source = open_source(root, medvec.s3_endpoint_url)
    tick = watch_source(source, medvec.home_path, cursor, options, launcher=sensor_name, now=clock())
    if tick.changed:
        new = report_changed(database.connect(medvec.lancedb_uri), tick.changed)
        if new:  # paths can hold identifiers: the log gives counts, ingest_errors the files
            context.log.warning(f"{new} file(s) changed after their batch was opened; they are not batched "
                                "again (see ingest_errors, stage 'changed', or `medvec stats`)")
    requests, new_partitions = launch_batches(context, medvec, embedder, tick.cursor, sensor_name,
                                       saw_new_files=bool(tick.new_settled or tick.unsettled), options=options,
                                       opened=len(tick.opened))
    context.log.info(f"{tick.summary()}; {len(requests)} run(s) requested in {tick.seconds['total']:.2f}s")
    partitions = [batch_partitions.build_add_request(new_partitions)] if new_partitions else []
    if not requests:
        return dg.SensorResult(skip_reason=tick.summary(), dynamic_partitions_requests=partitions,
                               cursor=tick.cursor.to_json())
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions,
                           cursor=tick.cursor.to_json())


def _source_sensor(name: str, pick_root, description: str) -> dg.SensorDefinition:
    # The selection includes the checks on these assets, so the batch runs check what they wrote.
    @dg.sensor(name=name, target=dg.AssetSelection.assets(embedding_model, *BATCH_ASSETS),
               minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.STOPPED, description=description)
    def _sensor(context: dg.SensorEvaluationContext, medvec: MedvecHomeResource, embedder: EmbedderResource):
        return watch_tick(context, medvec, embedder, pick_root(get_settings()), name)

    return _sensor


incoming_folder_sensor = _source_sensor(
    FOLDER_SENSOR, folder_root,
    "New settled files in the watched folder ($MEDVEC_SOURCE, default $MEDVEC_HOME/incoming) open batches "
    "of at most MEDVEC_WATCH_BATCH_SIZE files and launch one run per batch.")

s3_prefix_sensor = _source_sensor(
    S3_SENSOR, s3_root,
    "New objects under the watched S3 prefix (MEDVEC_WATCH_S3) open batches and launch one run per batch; "
    "a look at a large prefix continues over several ticks.")


@dg.sensor(job=search_refresh_job, minimum_interval_seconds=SENSOR_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.RUNNING)
def search_refresh_sensor(context: dg.SensorEvaluationContext, medvec: MedvecHomeResource):
    """Refresh image_index, fallback_queries and similar_images once after a wave of batches: when new
    embeddings landed since the last refresh began, no embedding run is queued or running, no batch
    awaits launch, and nothing new landed for MEDVEC_REFRESH_QUIET_S seconds."""
    instance = context.instance
    index_event = instance.get_latest_materialization_event(SEARCH_ASSETS[0].key)
    indexed_from = None
    if index_event is not None:
        run = instance.get_run_record_by_id(index_event.run_id)
        indexed_from = (run.start_time or run.create_timestamp.timestamp()) if run else index_event.timestamp
    latest = latest_embedding(instance, indexed_from)
    embedding_runs = refresh_runs = 0
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES)):
        run = record.dagster_run
        if run.tags.get(LAUNCHED_BY_TAG):  # a medvec command refreshes search itself when it ends
            continue
        selected = run.asset_selection or set()
        embedding_runs += image_embeddings.key in selected or embedding_model.key in selected
        refresh_runs += SEARCH_ASSETS[0].key in selected
    due, reason = refresh_decision(
        last_embedded_at=latest.timestamp if latest else None, indexed_from=indexed_from,
        embedding_in_flight=embedding_runs, refresh_in_flight=bool(refresh_runs),
        awaiting=lambda: len(_pending_launches(instance, medvec.home_path, None)), now=clock(),
        quiet_s=WatchOptions.from_env().refresh_quiet_s)
    if not due:
        return dg.SkipReason(reason)
    return dg.RunRequest(run_key=f"refresh:{latest.storage_id}",
                         tags={"medvec/refresh_after": str(latest.storage_id)})


def latest_embedding(instance: dg.DagsterInstance, indexed_from: float | None) -> dg.EventLogRecord | None:
    """The newest image_embeddings materialisation that embedded something, or the newest from before
    the last refresh began (which that refresh covers, whatever it held). A re-run whose images were all
    in the table already (`embedded` 0 in its metadata) changed no vector: refreshing for it would only
    spend model calls (a NIM's text requests for the fallback queries)."""
    cursor = None
    while True:
        page = instance.fetch_materializations(image_embeddings.key, limit=100, cursor=cursor)
        for record in page.records:
            embedded = record.asset_materialization.metadata.get("embedded")
            if embedded is None or embedded.value or (indexed_from is not None and record.timestamp <= indexed_from):
                return record  # (no count recorded: assume it changed vectors)
        if not page.has_more:
            return None
        cursor = page.cursor
