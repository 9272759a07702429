"""A model's files from a local folder: used in place and never written to; its manifest lives in the cache."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from medvec.models.file_manifest import (ModelFilesError, ResolvedModel, differences, fingerprint, listed_paths,
                                         manifest_revision, read_manifest, summarize, write_manifest)
from medvec.progress import Listener

log = logging.getLogger(__name__)


def resolve_local(model_id: str, location: str | None, cache_dir: Path, progress: Listener) -> ResolvedModel:
    if not location:
        raise ModelFilesError(f"source=local needs the folder holding {model_id}'s files: set MEDVEC_MODEL_LOCATION")
    folder = Path(os.path.abspath(os.path.expanduser(location)))  # like LocalFolderSource: keeps symlinks
    if not folder.is_dir():
        raise ModelFilesError(f"the model folder {folder} for {model_id} does not exist or is not a folder; "
                              "fix MEDVEC_MODEL_LOCATION")
    # The user's folder is never written to: its manifest lives in the cache, keyed by the folder's path.
    record_dir = cache_dir / "local" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    previous = read_manifest(record_dir, "local", str(folder))
    paths = listed_paths(folder)
    if not paths:
        raise ModelFilesError(f"the model folder {folder} for {model_id} holds no files; fix MEDVEC_MODEL_LOCATION")
    files, mtimes = fingerprint(folder, paths, previous, progress)
    resolved = ResolvedModel(model_id, "local", str(folder), folder, manifest_revision(files), files)
    if previous is not None and previous.revision != resolved.revision:
        # Accepted, not refused: a local folder is the user's to edit. The new revision is what gets recorded.
        log.warning("model files changed since last resolution: %s in %s (%s); now revision %s", model_id, folder,
                    summarize(differences(previous.files(), files)), resolved.revision)
    write_manifest(record_dir, resolved, mtimes)
    return resolved


