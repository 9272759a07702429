"""Serverless search bundles: a static folder that searches one model's table inside the browser."""

from medvec.bundle.build import BundleError, BundleOptions, build_bundle

__all__ = ["BundleError", "BundleOptions", "build_bundle"]
