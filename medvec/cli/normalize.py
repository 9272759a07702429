"""`medvec normalize`: files or folders to WebP views, thumbnails and records, without Dagster or batches."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from medvec.cli.options import add_render_options
from medvec.cli.output import bar, print_errors, print_json, refuse
from medvec.settings import get_settings

log = logging.getLogger("medvec")


def register(sub) -> None:
    p = sub.add_parser("normalize", help="normalise DICOM/PNG/JPEG/TIFF files to WebP (no Dagster, no batches)")
    p.add_argument("inputs", nargs="+", help="files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metadata", help="metadata CSV mapping files to labels, view, split, patient")
    p.add_argument("--json", action="store_true", help="print records and errors as JSON")
    add_render_options(p)
    p.set_defaults(func=cmd_normalize)


def cmd_normalize(args: argparse.Namespace) -> int:
    from medvec.datasets.metadata_csv import MetadataTable
    from medvec.imaging.normalize import NormalizeOptions
    from medvec.phi import MissingPseudonymKey, Pseudonymizer
    from medvec.sources import LocalFolderSource

    settings = get_settings()
    out = Path(args.out)
    try:
        pseudonymizer = Pseudonymizer(settings.pseudonym_key and settings.pseudonym_key.get_secret_value(),
                                      allow_dev_key=settings.allow_dev_key)
    except MissingPseudonymKey as exc:
        return refuse(str(exc))
    metadata = (MetadataTable.from_csv_text(Path(args.metadata).read_text(encoding="utf-8-sig"), pseudonymizer,
                                            tuple(args.allow_column)) if args.metadata else None)
    options = NormalizeOptions(size=args.size, thumb_size=args.thumb_size, pad_square=args.pad_square,
                               window=args.window, allow_tags=tuple(args.allow_tag), max_pixels=settings.max_pixels,
                               date_policy=settings.date_policy, allow_burned_in=settings.allow_burned_in,
                               burned_in_modalities=settings.burned_in_modality_list)
    sources = [LocalFolderSource(path, max_file_bytes=settings.max_file_bytes) for path in args.inputs]
    files = [(source, entry.uri) for source in sources for entry in source.list_files()]
    records, errors = [], []
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    with bar(len(files), "normalising", not args.json) as progress:
        for source, uri in files:
            record, error = _normalize_one(source, uri, out, options, pseudonymizer, metadata)
            if record is not None:
                records.append(record)
            else:
                errors.append(error)
            progress.update(1)
    with open(out / "records.jsonl", "w") as fh:
        for record in records:
            fh.write(json.dumps(record.to_row()) + "\n")
    if args.json:
        print_json({"out": str(out), "ok": len(records), "errors": len(errors),
                    "records": [r.to_row() for r in records], "error_records": [e.to_row() for e in errors]})
    else:
        print(f"{len(records)} image(s) written to {out}/images and {out}/thumbs; records in {out}/records.jsonl")
        print_errors(errors)
    return 0 if records or not files else 1


def _normalize_one(source, uri: str, out: Path, options, pseudonymizer, metadata):
    """One file to its WebP pair and record, or to one error record (the other files go on)."""
    from medvec.imaging.dicom import UnreadableImage
    from medvec.imaging.normalize import normalize_bytes
    from medvec.tables.records import IngestError

    try:
        result = normalize_bytes(source.read_bytes(uri), uri, options=options, pseudonymizer=pseudonymizer,
                                 metadata=metadata.lookup(uri) if metadata else None)
    except UnreadableImage as exc:
        return None, IngestError(uri, "", exc.stage, exc.error, exc.reason)
    except OSError as exc:
        return None, IngestError(uri, "", "read", type(exc).__name__, f"could not read the file ({exc.strerror or exc})")
    except Exception as exc:  # noqa: BLE001 - one decoder bug must not stop the other files
        log.exception("unexpected failure normalising one file")
        return None, IngestError(uri, "", "decode", type(exc).__name__,
                                 f"unexpected failure while decoding ({str(exc)[:200]})")
    name = result.record.image_id
    (out / "images" / f"{name}.webp").write_bytes(result.view_webp)
    (out / "thumbs" / f"{name}.webp").write_bytes(result.thumb_webp)
    result.record.image_uri = f"images/{name}.webp"
    result.record.thumb_uri = f"thumbs/{name}.webp"
    return result.record, None
