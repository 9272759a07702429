"""`medvec sample-data`: the offline sample dataset (real WG04 files plus synthetic chest DICOM)."""

from __future__ import annotations

import argparse

from medvec.cli.output import bar


def register(sub) -> None:
    p = sub.add_parser("sample-data", help="write the offline sample dataset (real WG04 + synthetic chest DICOM)")
    p.add_argument("dir", help="folder to write the sample files and labels.csv into")
    p.add_argument("--count", type=int, default=36, help="synthetic chest images (default 36)")
    p.set_defaults(func=cmd_sample_data)


def cmd_sample_data(args: argparse.Namespace) -> int:
    from medvec.sample.writer import write_sample_data

    with bar(0, "writing sample data", True) as progress:
        def on_progress(done: int, total: int) -> None:
            progress.total = total
            progress.n = done
            progress.refresh()

        summary = write_sample_data(args.dir, count=args.count, progress=on_progress)
    labels = ", ".join(f"{name}: {n}" for name, n in sorted(summary.by_label.items()))
    print(f"wrote {len(summary.files)} file(s) to {summary.out_dir} ({labels}); labels in {summary.labels_csv}")
    return 0
