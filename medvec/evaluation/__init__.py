"""Retrieval evaluation and its metrics."""
