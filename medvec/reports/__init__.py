"""Radiology reports: parsing and scrubbing, and their per-model LanceDB tables."""
