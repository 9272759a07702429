"""Dagster resources: thin, swappable wrappers that hand domain objects to the assets."""

from resources.medvec_home import MedvecHomeResource

__all__ = ["MedvecHomeResource"]
