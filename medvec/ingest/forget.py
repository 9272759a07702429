"""Dropping one entry from a batch's manifest (`medvec backfill --forget PATH BATCH`): the way out when a
single file must leave a batch (deleted at the source, or one that no release can read), so the batch
re-runs without it. The only change a manifest ever sees after its batch opened."""

from __future__ import annotations

from medvec.home import batch_dir
from medvec.ingest.batches import batch_opening_lock, load_manifest
from medvec.sources.local_files import path_for_uri
from medvec.storage import HomePath, read_parquet, write_atomic, write_parquet


def forget_entry(home: HomePath, batch: str, path: str) -> list[str]:
    """Remove the entries naming `path` (its URI, or the local path an escaped URI stands for) from the
    batch's manifest, records and errors; returns the URIs removed. Raises KeyError when none matches.
    The batch's next run rewrites its rows in the errors table without them."""
    with batch_opening_lock(home):  # never against an ingest planning from these manifests
        manifest = load_manifest(home, batch)
        gone = [f.uri for f in manifest.files if path in (f.uri, path_for_uri(f.uri))]
        if not gone:
            raise KeyError(f"batch {batch} has no entry {path!r}; `medvec backfill --all --dry-run` lists batches")
        manifest.files = [f for f in manifest.files if f.uri not in gone]
        directory = batch_dir(home, batch)
        write_atomic(directory / "manifest.json", manifest.to_json().encode())
        for name in ("records.parquet", "errors.parquet"):
            table_path = directory / name
            if table_path.exists():
                table = read_parquet(table_path)
                keep = [uri not in gone for uri in table.column("source_uri").to_pylist()]
                write_parquet(table_path, table.filter(keep))
    return gone
