"""The Medvec code location: every asset, job and resource, configured from the environment.

MEDVEC_PROFILE (`pipelines/profiles.py`) picks where runs execute: the assets are the same in every
profile; only the executor and the embedder's defaults change."""

import dagster as dg

from assets.checks import CHECKS
from medvec.settings import Settings
from pipelines.jobs import ASSETS, JOBS
from pipelines.profiles import gpu_steps, profile_from_env
from pipelines.sensors import incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor
from resources import home_resources

settings = Settings.from_env()
profile = profile_from_env()
embedder = profile.embedder(settings)

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    sensors=[incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor],
    # The home and the IO manager that keeps asset values in it: steps in other pods read them there.
    resources={**home_resources(settings), "embedder": embedder},
    # Every job runs on the profile's executor; on the cluster the gpu-pool steps ask for a GPU.
    executor=profile.executor(gpu_steps(ASSETS, embedder)),
)
