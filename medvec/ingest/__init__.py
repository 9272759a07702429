"""Batches of source files: manifests, normalising, embedding, watching a source, backfill plans."""
