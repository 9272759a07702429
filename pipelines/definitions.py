"""The Medvec code location: every asset, job and resource, configured from Settings.

MEDVEC_PROFILE (`pipelines/profiles.py`) picks where runs execute: the assets are the same in every
profile; only the executor and the embedder's defaults change. `build_definitions(settings)` builds them
for given Settings (`medvec demo` runs Dagster in process with its own); `defs` is this process's."""

import dagster as dg

from assets.checks import CHECKS
from assets.downloads import DOWNLOAD_ASSETS
from medvec.settings import Settings, get_settings
from pipelines.dicomweb_sensor import dicomweb_backfill_job, dicomweb_sensor
from pipelines.jobs import ASSETS, JOBS
from pipelines.profiles import gpu_steps, profile_from_env
from pipelines.sensors import incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor
from resources import home_resources
from resources.physionet import PhysioNetResource


def build_definitions(settings: Settings) -> dg.Definitions:
    """The code location for `settings`, on the profile MEDVEC_PROFILE names (checked against the
    environment: a profile's requirements are about the deployment, not one command's settings)."""
    profile = profile_from_env()
    embedder = profile.embedder(settings)
    return dg.Definitions(
        assets=[*ASSETS, *DOWNLOAD_ASSETS],
        asset_checks=CHECKS,
        jobs=[*JOBS, dicomweb_backfill_job],
        sensors=[incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor, dicomweb_sensor],
        # The home and the IO manager that keeps asset values in it: steps in other pods read them there.
        resources={**home_resources(settings), "embedder": embedder,
                   "physionet": PhysioNetResource.from_settings(settings)},
        # Every job runs on the profile's executor; on the cluster the gpu-pool steps ask for a GPU.
        executor=profile.executor(gpu_steps(ASSETS, embedder)),
    )


defs = build_definitions(get_settings())
