"""Download assets: one per dataset `medvec fetch` knows, each fetching into the watched folder
(`<watched folder>/<dataset>/` by default) so the folder sensor ingests what arrives, file by whole file."""

import os

import dagster as dg

from assets.metadata import OWNERS, TAGS
from medvec import progress
from medvec.datasets.fetch import REMOTES, FetchError, Remote, fetch_dataset
from medvec.settings import get_settings
from resources.physionet import PhysioNetResource


class DownloadConfig(dg.Config):
    target: str = ""  # a local folder; default: <the watched folder>/<dataset>
    only: list[str] = []  # only paths starting with one of these prefixes (e.g. files/p10/, dataset/images/)
    base_url: str = ""  # a mirror instead of the publisher's address


def download_target(config: DownloadConfig, dataset: str) -> str:
    """Where a download lands: the configured folder, else the dataset's folder in the watched folder."""
    target = config.target or os.path.join(get_settings().watched_folder, dataset)
    if target.startswith("s3://"):
        raise FetchError(f"downloads need a local folder, not {target}: set MEDVEC_SOURCE to a folder the folder "
                         "sensor watches, or give this asset's config a local `target`")
    return target


def _download_asset(remote: Remote) -> dg.AssetsDefinition:
    access = "credentialed on PhysioNet (PHYSIONET_USERNAME / PHYSIONET_PASSWORD)" if remote.credentials else "public"
    name = remote.name.replace("-", "_") + "_download"

    @dg.asset(name=name, group_name="downloads", kinds={"http"}, owners=OWNERS, tags=TAGS,
              description=f"{remote.name} from {remote.base_url} ({access}), resumed and verified file by file "
                          "into the watched folder: what `medvec fetch` does.")
    def _download(context: dg.AssetExecutionContext, config: DownloadConfig,
                  physionet: PhysioNetResource) -> dg.MaterializeResult:
        target = download_target(config, remote.name)
        summary = fetch_dataset(remote.name, target, base_url=config.base_url or None, only=tuple(config.only),
                                username=physionet.username, password=physionet.password,
                                progress=lambda file, done, total: progress.report(f"fetch {file}", done, total or 0))
        # Counts only: file paths can hold subject ids, and the details are in the process's log.
        metadata = {"target": target, "fetched": len(summary.fetched), "unpacked": len(summary.unpacked),
                    "already_complete": len(summary.already_complete), "refused": len(summary.refused),
                    "bytes_downloaded": summary.bytes_downloaded}
        if summary.refused:
            raise dg.Failure(description=f"{len(summary.refused)} file(s) failed their check and were deleted; "
                                         "materialise again to fetch them", metadata=metadata)
        context.log.info(f"{remote.name}: {len(summary.fetched)} fetched, {len(summary.already_complete)} already "
                         f"complete, {summary.bytes_downloaded:,} bytes downloaded into {target}")
        return dg.MaterializeResult(metadata=metadata)

    return _download


DOWNLOAD_ASSETS = [_download_asset(remote) for remote in REMOTES.values()]
