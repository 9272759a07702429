"""The DICOMweb archive sensor and its date-range backfill. What to open is decided in
`medvec.ingest.dicomweb_watch`; batches are launched by the folder sensor's own launch step
(`pipelines.sensors.launch_batches`), so model readiness, run keys and partitions behave the same.

Per tick: one QIDO-RS look from the cursor's study-date floor, at most MEDVEC_DICOMWEB_MAX_PER_TICK new
instances opened, their runs requested; a batch whose run failed (the server went down while it was
being retrieved) is requested again on a later tick once the server answers, and resumes where it stopped.
"""

from dataclasses import asdict

import dagster as dg

from assets.embeddings import embedding_model
from assets.partitions import batch_partitions
from medvec.ingest.batches import is_normalized
from medvec.ingest.dicomweb_watch import DicomWebCursor, holding_batches, open_instances, watch_dicomweb
from medvec.ingest.watch import WatchCursor, WatchOptions
from medvec.sources import SourceUnavailable
from medvec.sources.dicomweb import DicomWebSource, InstanceQuery, dicomweb_settings
from pipelines.backfill import BATCH_ASSETS
from pipelines.sensors import SENSOR_INTERVAL_S, UNFINISHED_RUN_STATUSES, launch_batches
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


@dg.sensor(name=DICOMWEB_SENSOR, target=[embedding_model, *BATCH_ASSETS], minimum_interval_seconds=SENSOR_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="New instances on the DICOMweb archive (MEDVEC_DICOMWEB_URL, QIDO-RS from the cursor's "
                       "study date) open batches of at most MEDVEC_DICOMWEB_MAX_PER_TICK instances; a batch "
                       "whose run failed while the archive was down is resumed on a later tick.")
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
    requests, new_partitions = launch_batches(context, medvec, embedder, watch_cursor, DICOMWEB_SENSOR,
                                       saw_new_files=bool(tick.opened), options=options)
    cursor.watch = asdict(watch_cursor)
    requests += _resume_requests(context, medvec, cursor)
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
    """Open batches for every instance in the study date range that no batch holds (dicomweb_sensor
    launches them on its next tick), and list the batches already holding the rest of the range.

    Held instances are not opened again: an instance belongs to one batch (the SOPInstanceUID rule of
    `open_instances`), and re-running its batch would re-run every other instance that batch holds,
    which may lie outside the range; the batches are listed so an operator can re-run them by hand."""
    settings = dicomweb_settings()
    if not settings.url:
        raise dg.Failure("set MEDVEC_DICOMWEB_URL to the archive's DICOMweb root")
    source = DicomWebSource(settings.url, settings)
    query = InstanceQuery(modalities=tuple(config.modalities) or settings.modalities, filters=settings.query,
                          date_from=config.study_date_from or None, date_to=config.study_date_to or None)
    instances = list(source.search_instances(query))
    held = holding_batches(medvec.home_path, instances)
    opened, _ = open_instances(source, medvec.home_path, instances, limit=len(instances),
                               batch_size=WatchOptions.from_env().batch_size, launcher=DICOMWEB_SENSOR)
    batches = [m.batch for m in opened]  # each marked as awaiting dicomweb_sensor's launch
    context.instance.add_dynamic_partitions(batch_partitions.name, batches)
    new = sum(len(m.files) for m in opened)
    context.log.info(f"{len(instances)} instance(s) in the range, {len(instances) - new} already held by "
                     f"{len(held)} batch(es); opened {len(batches)} batch(es) of {new}; {DICOMWEB_SENSOR} "
                     "launches them on its next tick")
    context.add_output_metadata({"instances_in_range": len(instances), "instances_opened": new,
                                 "batches_opened": dg.MetadataValue.json(batches),
                                 "batches_already_holding_range": dg.MetadataValue.json(held)})
    return batches


@dg.job(description="Backfill the DICOMweb archive by study date range (launchpad config: study_date_from, "
                    "study_date_to, modalities; YYYYMMDD, inclusive): opens batches for exactly the range's "
                    "instances that no batch holds, and dicomweb_sensor launches them on its next tick. "
                    "Instances a batch already holds are not opened again (each instance belongs to one "
                    "batch); the op's metadata lists those batches (batches_already_holding_range) so they "
                    "can be re-run from the batch partitions page. Needs dicomweb_sensor running.")
def dicomweb_backfill_job():
    open_dicomweb_range()
