"""Datasets' metadata: label vocabularies and per-image metadata from CSV files."""
