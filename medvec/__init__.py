"""Medvec: medical images to searchable embeddings. This package is Dagster-free domain code."""

__version__ = "0.1.0"
