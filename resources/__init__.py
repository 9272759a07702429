"""Dagster resources: thin, swappable wrappers that hand domain objects to the assets."""

from medvec.settings import Settings
from resources.home_io_manager import HomePickleIOManager
from resources.medvec_home import MedvecHomeResource

__all__ = ["HomePickleIOManager", "MedvecHomeResource", "home_resources"]


def home_resources(settings: Settings) -> dict:
    """The resources every run needs to find the home: the home itself and the IO manager that keeps
    asset values in it (so steps on other machines can read them)."""
    medvec = MedvecHomeResource.from_settings(settings)
    io_manager = HomePickleIOManager(home=medvec.home, s3_endpoint_url=medvec.s3_endpoint_url)
    return {"medvec": medvec, "io_manager": io_manager}
