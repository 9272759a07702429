"""The DICOMweb archive sensor and its date-range backfill. What to open is decided in
`medvec.ingest.dicomweb_watch`; batches are launched by the folder sensor's own launch step
(`pipelines.sensors.launch_batches`), so model readiness, run keys and partitions behave the same.

Per tick: one QIDO-RS look from the cursor's study-date floor, at most MEDVEC_DICOMWEB_MAX_PER_TICK new
instances opened, their runs requested; a batch whose run failed (the server went down while it was
being retrieved) is requested again on a later tick once the server answers, and resumes where it stopped;
a batch that a date-range backfill marked for re-ingest gets one run that reads just the marked instances.
"""

from dataclasses import asdict

import dagster as dg

from assets.embeddings import embedding_model
from assets.ingest import REINGEST_TAG
from assets.partitions import batch_partitions
from medvec.ingest.batches import is_normalized
from medvec.ingest.dicomweb_watch import DicomWebCursor, backfill_range, watch_dicomweb
from medvec.ingest.reingest import Reingest, reingest_requests
from medvec.ingest.watch import WatchCursor, WatchOptions
from medvec.sources import SourceUnavailable
from medvec.sources.dicomweb import DicomWebSource, InstanceQuery, dicomweb_settings
from pipelines.backfill import BATCH_ASSETS, model_ready
from pipelines.sensors import BATCH_CHECK_KEYS, SENSOR_INTERVAL_S, UNFINISHED_RUN_STATUSES, launch_batches
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource

DICOMWEB_SENSOR = "dicomweb_sensor"
MAX_RESUMES = 5  # runs requested again for one batch before an operator has to look


def _resume_requests(context, medvec: MedvecHomeResource, cursor: DicomWebCursor) -> list[dg.RunRequest]:
    """Runs again for this sensor's batches whose last run failed; normalised batches leave the list."""
    requests, still_open = [], []
    for batch in cursor.open_batches:
        if is_normalized(medvec.home_path, batch):
            cursor.resumed.pop(batch, None)
            continue
        still_open.append(batch)
        [last] = context.instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": batch}),
                                                  limit=1) or [None]
        tries = cursor.resumed.get(batch, 0)
        if last is None or last.dagster_run.status in UNFINISHED_RUN_STATUSES or tries >= MAX_RESUMES:
            continue
        if last.dagster_run.status == dg.DagsterRunStatus.FAILURE:
            cursor.resumed[batch] = tries + 1
            requests.append(dg.RunRequest(run_key=f"batch:{batch}:resume:{tries + 1}", partition_key=batch,
                                          asset_selection=[a.key for a in BATCH_ASSETS],
                                          tags={"medvec/batch": batch}))
    cursor.open_batches = still_open
    return requests


def _reingest_runs(instance: dg.DagsterInstance, reingests: list[Reingest]) -> list[dg.RunRequest]:
    """One run per re-ingest request (the run key names it); a batch with a run in flight waits for it."""
    requests = []
    for reingest in reingests:
        busy = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": reingest.batch},
                                                              statuses=UNFINISHED_RUN_STATUSES), limit=1)
        if not busy:
            requests.append(dg.RunRequest(
                run_key=f"batch:{reingest.batch}:reingest:{reingest.request}", partition_key=reingest.batch,
                asset_selection=[a.key for a in BATCH_ASSETS], asset_check_keys=BATCH_CHECK_KEYS,
                tags={"medvec/batch": reingest.batch, REINGEST_TAG: reingest.request}))
    return requests


@dg.sensor(name=DICOMWEB_SENSOR, target=[embedding_model, *BATCH_ASSETS], minimum_interval_seconds=SENSOR_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="New instances on the DICOMweb archive (MEDVEC_DICOMWEB_URL, QIDO-RS from the cursor's "
                       "study date) open batches of at most MEDVEC_DICOMWEB_MAX_PER_TICK instances; a batch "
                       "whose run failed while the archive was down is resumed on a later tick; a batch that "
                       "dicomweb_backfill_job marked for re-ingest gets one run for just those instances.")
def dicomweb_sensor(context: dg.SensorEvaluationContext, medvec: MedvecHomeResource, embedder: EmbedderResource):
    cursor = DicomWebCursor.from_json(context.cursor)
    settings = dicomweb_settings()
    if not settings.url:
        return dg.SensorResult(skip_reason="no archive to watch: set MEDVEC_DICOMWEB_URL", cursor=cursor.to_json())
    options = WatchOptions.from_env()
    try:
        tick = watch_dicomweb(DicomWebSource(settings.url, settings), medvec.home_path, cursor,
                              launcher=DICOMWEB_SENSOR, batch_size=options.batch_size)
    except SourceUnavailable as exc:  # nothing opened, cursor unchanged: the next tick looks again
        context.log.warning(str(exc))
        return dg.SensorResult(skip_reason=f"{exc}; the next tick looks again", cursor=cursor.to_json())
    watch_cursor = WatchCursor(**cursor.watch)
    reingests = reingest_requests(medvec.home_path, DICOMWEB_SENSOR)
    # A waiting re-ingest counts as new files: it needs the model too, and asks for it when not ready.
    requests, new_partitions = launch_batches(context, medvec, embedder, watch_cursor, DICOMWEB_SENSOR,
                                       saw_new_files=bool(tick.opened or reingests), options=options)
    cursor.watch = asdict(watch_cursor)
    requests += _resume_requests(context, medvec, cursor)
    if reingests and model_ready(context.instance, embedder, medvec.home_path):
        requests += _reingest_runs(context.instance, reingests)
    context.log.info(f"{tick.summary()}; {len(requests)} run(s) requested in {tick.seconds:.2f}s")
    partitions = [batch_partitions.build_add_request(new_partitions)] if new_partitions else []
    if not requests:
        return dg.SensorResult(skip_reason=tick.summary(), dynamic_partitions_requests=partitions,
                               cursor=cursor.to_json())
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions, cursor=cursor.to_json())


class DicomWebBackfillConfig(dg.Config):
    study_date_from: str = ""  # YYYYMMDD, inclusive; empty: open
    study_date_to: str = ""  # YYYYMMDD, inclusive; empty: open
    modalities: list[str] = []  # default: MEDVEC_DICOMWEB_MODALITIES


@dg.op
def open_dicomweb_range(context: dg.OpExecutionContext, config: DicomWebBackfillConfig,
                        medvec: MedvecHomeResource) -> list[str]:
    """Ingest exactly the instances in the study date range again: batches opened for those no batch
    holds, and a re-ingest marker on each batch holding the others, naming just those instances (the
    batch's other files, outside the range, are not read). dicomweb_sensor launches both on its next tick."""
    settings = dicomweb_settings()
    if not settings.url:
        raise dg.Failure("set MEDVEC_DICOMWEB_URL to the archive's DICOMweb root")
    source = DicomWebSource(settings.url, settings)
    query = InstanceQuery(modalities=tuple(config.modalities) or settings.modalities, filters=settings.query,
                          date_from=config.study_date_from or None, date_to=config.study_date_to or None)
    instances = list(source.search_instances(query))
    plan = backfill_range(source, medvec.home_path, instances, batch_size=WatchOptions.from_env().batch_size,
                          launcher=DICOMWEB_SENSOR)
    batches = [m.batch for m in plan.opened]  # each marked as awaiting dicomweb_sensor's launch
    context.instance.add_dynamic_partitions(batch_partitions.name, batches)
    opened = sum(len(m.files) for m in plan.opened)
    context.log.info(f"{plan.instances} instance(s) in the range: {opened} in {len(batches)} new batch(es), "
                     f"{sum(plan.reingest.values())} to re-ingest in {len(plan.reingest)} batch(es), "
                     f"{sum(plan.pending.values())} in {len(plan.pending)} batch(es) whose first run is still to "
                     f"finish; {DICOMWEB_SENSOR} launches the runs on its next tick")
    context.add_output_metadata({"instances_in_range": plan.instances, "instances_opened": opened,
                                 "instances_reingested": sum(plan.reingest.values()),
                                 "batches_opened": dg.MetadataValue.json(batches),
                                 "batches_reingesting": dg.MetadataValue.json(plan.reingest),
                                 "batches_pending_first_run": dg.MetadataValue.json(plan.pending)})
    return [*batches, *plan.reingest]


@dg.job(description="Backfill the DICOMweb archive by study date range (launchpad config: study_date_from, "
                    "study_date_to, modalities; YYYYMMDD, inclusive): exactly the range's instances are "
                    "retrieved and normalised again, nothing outside it. Instances no batch holds open new "
                    "batches; a batch holding some of the range gets a re-ingest marker naming just those, and "
                    "its run reads only them (embedding is skipped for unchanged content). dicomweb_sensor "
                    "launches the runs on its next tick, so it must be running.")
def dicomweb_backfill_job():
    open_dicomweb_range()
