"""`medvec fetch DATASET DIR`: the argument table and the run function (credentials from the environment)."""

from __future__ import annotations

from medvec.settings import get_settings
from medvec.datasets.fetch import REMOTES, FetchError, fetch_dataset


def register(subparsers) -> None:
    p = subparsers.add_parser("fetch", help="download a public dataset into DIR, resuming and verifying each file")
    p.add_argument("dataset", choices=tuple(REMOTES), help="which dataset")
    p.add_argument("dir", help="target folder (the folder Medvec watches, or one it will ingest)")
    p.add_argument("--base-url", help="mirror or test server instead of the dataset's own address")
    p.add_argument("--only", action="append", default=[], metavar="PREFIX",
                   help="only files whose path starts with PREFIX (e.g. files/p10/); repeatable")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        bar = bars.get(name)  # not `or`: a tqdm without a total refuses bool()
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name[-40:], unit="B", unit_scale=True, leave=False)
        bar.n = done
        bar.refresh()

    settings = get_settings()
    password = settings.physionet_password
    try:
        # PhysioNet credentials, like `wget --user`: read here, handed to the client, never printed.
        summary = fetch_dataset(args.dataset, args.dir, base_url=args.base_url, only=tuple(args.only),
                                username=settings.physionet_username,
                                password=password and password.get_secret_value(), progress=progress)
    except FetchError as exc:
        print(f"medvec fetch: {exc}")
        return 1
    finally:
        for bar in bars.values():
            bar.close()
    unpacked = f", {len(summary.unpacked)} unpacked" if summary.unpacked else ""
    print(f"{summary.dataset}: {len(summary.fetched)} fetched{unpacked}, {len(summary.already_complete)} already "
          f"complete, {len(summary.refused)} refused (failed their check, deleted), {summary.bytes_downloaded} bytes "
          "downloaded")
    return 1 if summary.refused else 0
