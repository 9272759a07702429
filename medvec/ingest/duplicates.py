"""Telling duplicates apart: a later file under an image id another file already holds is the same image
(kept once, a note) or another image under a reused SOP Instance UID (an error naming both files)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple

from medvec.storage import HomePath
from medvec.tables.records import ImageRecord, IngestError

if TYPE_CHECKING:
    from medvec.ingest.batches import BatchResult


class ImageHolder(NamedTuple):
    """The record that holds an image id: where it came from and what its bytes were."""

    batch: str
    source_uri: str
    content_sha256: str
    image_uri: str


def keep_first_holders(home: HomePath, outcomes: dict[int, object], view_shas: dict[int, str],
                        owners: dict[str, ImageHolder], result: "BatchResult") -> None:
    """Sort outcomes into `result`'s records, errors and duplicates, in manifest order.

    An image belongs to the first batch that held it: a later file with the same image_id (the same
    SOPInstanceUID or the same bytes) is a duplicate when it is the same image (the same bytes, or the
    same rendered pixels: a re-encoded copy), and an error naming both files when it is another image
    under a reused UID: skipping that silently would lose an image without a word."""
    seen: dict[str, ImageHolder] = {}
    for index in sorted(outcomes):  # manifest order makes duplicate resolution deterministic
        outcome = outcomes[index]
        if isinstance(outcome, IngestError):
            result.errors.append(outcome)
            continue
        holder = seen.get(outcome.image_id) or owners.get(outcome.image_id)
        if holder is None:
            seen[outcome.image_id] = ImageHolder(result.batch, outcome.source_uri, outcome.content_sha256,
                                                 outcome.image_uri)
            result.records.append(outcome)
            continue
        where = _name(holder.source_uri) if holder.batch == result.batch else f"batch {holder.batch}"
        if _same_image(home, outcome, view_shas.get(index), holder):
            result.duplicates.append(outcome.source_uri)
            result.notes.append(f"{_name(outcome.source_uri)}: same image as {where}; kept once")
        else:
            result.errors.append(IngestError(
                outcome.source_uri, result.batch, "duplicate", "DuplicateInstance",
                f"another image already holds this SOP Instance UID: {holder.source_uri} ({where}) has "
                "different content; this file was not stored"))


def _same_image(home: HomePath, outcome: ImageRecord, view_sha: str | None, holder: ImageHolder) -> bool:
    if outcome.content_sha256 == holder.content_sha256:
        return True
    stored = home / holder.image_uri
    try:
        return view_sha is not None and hashlib.sha256(stored.read_bytes()).hexdigest() == view_sha
    except OSError:
        return False


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]
