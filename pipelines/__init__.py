"""Dagster wiring: partitions, jobs, the code location's Definitions, in-process ingest."""
