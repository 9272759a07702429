"""A model's files from the Hugging Face Hub, in the Hub's own cache layout: a pinned commit reused without
asking the Hub when its verified copy is cached, damaged files downloaded again, Hub failures in plain words."""

from __future__ import annotations

import errno
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from medvec.models.file_manifest import (ModelFilesError, ResolvedModel, damaged_files, fingerprint, listed_paths,
                                         manifest_revision, read_manifest, summarize, write_manifest)
from medvec.progress import Listener

log = logging.getLogger(__name__)

#: What a transformers or open_clip model needs from a Hub repo: configs, weights, tokenizer and vocab files.
DEFAULT_HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*")
#: Pickled PyTorch weights: fetched only from a repo without safetensors, where they are the only weights
#: (older repos and some open_clip checkpoints). Beside safetensors they would double the download.
LEGACY_WEIGHT_PATTERNS = ("*.bin",)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_hub(model_id: str, revision: str | None, cache_dir: Path, token: str | None,
                 allow_patterns: list[str] | None, progress: Listener) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.file_download import repo_folder_name
    except ImportError as exc:
        raise ModelFilesError("source=hub needs huggingface_hub (it comes with transformers): "
                              "pip install -e . in Medvec's environment") from exc

    repo = model_id.removeprefix("hf-hub:")  # open_clip's spelling of a Hub id
    # The Hub's own cache layout under cache_dir/hub: `medvec models` looks there, and so can transformers.
    hub_cache = cache_dir / "hub"
    requested = list(allow_patterns) if allow_patterns else None
    offline = _hub_offline()

    if revision and _COMMIT.fullmatch(revision):
        pinned = hub_cache / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / revision
        reused = _reuse_pinned_snapshot(model_id, repo, pinned, requested, progress)
        if reused is not None:
            return reused

    patterns = requested or list(DEFAULT_HUB_PATTERNS)
    with _hub_errors(repo, revision, hub_cache, offline, token):
        snapshot = Path(snapshot_download(repo_id=repo, revision=revision, cache_dir=hub_cache, token=token,
                                          allow_patterns=patterns, local_files_only=offline))
        if requested is None and not any(p.endswith(".safetensors") for p in matching(listed_paths(snapshot),
                                                                                     patterns)):
            patterns += LEGACY_WEIGHT_PATTERNS
            # Pinned to the commit just resolved, so both passes describe the same snapshot.
            snapshot = Path(snapshot_download(repo_id=repo, revision=snapshot.name, cache_dir=hub_cache, token=token,
                                              allow_patterns=patterns, local_files_only=offline))
    commit = snapshot.name if _COMMIT.fullmatch(snapshot.name) else None

    previous = read_manifest(snapshot, "hub", repo)
    if previous is not None and previous.revision != commit:
        previous = None
    paths = matching(listed_paths(snapshot), patterns)
    if not paths:
        raise ModelFilesError(f"no files of {repo} at commit {commit} match {patterns}; check the model id "
                              "(MEDVEC_MODEL) or the file patterns")
    files, mtimes = fingerprint(snapshot, paths, previous, progress)

    # The Hub cache trusts a file once it exists; the record says what its bytes were when it arrived.
    damaged = [] if previous is None else damaged_files(previous, files, matching(previous.entries, patterns))
    if damaged:
        _download_again(repo, revision, commit, snapshot, hub_cache, offline, token, damaged)
        paths = matching(listed_paths(snapshot), patterns)
        files, mtimes = fingerprint(snapshot, paths, previous, progress)
        still = damaged_files(previous, files, damaged)
        if still:
            log.warning("the Hub's copy of %s at commit %s differs from the one recorded (%s); recording the Hub's",
                        repo, commit, summarize(still))

    resolved = ResolvedModel(model_id, "hub", repo, snapshot, commit or manifest_revision(files), files)
    write_manifest(snapshot, resolved, mtimes, allow_patterns=requested, patterns=patterns)
    log.info("resolved %s at commit %s: %d files, %d bytes", repo, commit, len(files), resolved.total_bytes())
    return resolved


def matching(paths: Iterable[str], patterns: list[str]) -> list[str]:
    """The paths the Hub's own pattern rules select (as `snapshot_download` applies them)."""
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(paths, allow_patterns=patterns))


def _download_again(repo: str, revision: str | None, commit: str | None, snapshot: Path, hub_cache: Path,
                    offline: bool, token: str | None, damaged: list[str]) -> None:
    """Fetch again the cached files that changed since they arrived (offline: say how to repair the cache)."""
    from huggingface_hub import hf_hub_download

    if offline:
        raise ModelFilesError(f"cached files of {repo} at commit {commit} are missing or changed since they "
                              f"were downloaded ({summarize(damaged)}) and HF_HUB_OFFLINE is set: unset it to "
                              f"download them again, or delete {snapshot.parent.parent} and download the model "
                              "once more")
    log.warning("cached files of %s at commit %s are missing or changed since they were downloaded (%s); "
                "downloading them again", repo, commit, summarize(damaged))
    with _hub_errors(repo, revision, hub_cache, offline, token):
        for rel in damaged:
            hf_hub_download(repo_id=repo, filename=rel, revision=commit, cache_dir=hub_cache, token=token,
                            force_download=True)


def _reuse_pinned_snapshot(model_id: str, repo: str, snapshot: Path, requested: list[str] | None,
                           progress: Listener) -> ResolvedModel | None:
    """A pinned commit's cached copy, when it still matches its record: no request to the Hub at all."""
    previous = read_manifest(snapshot, "hub", repo)
    if previous is None or previous.revision != snapshot.name or previous.allow_patterns != requested:
        return None
    paths = sorted(previous.entries)
    if not all((snapshot / p).is_file() for p in paths):
        return None
    files, mtimes = fingerprint(snapshot, paths, previous, progress)
    if {f.path: f for f in files} != previous.files():
        return None  # the full path below asks the Hub and repairs it
    resolved = ResolvedModel(model_id, "hub", repo, snapshot, snapshot.name, files)
    write_manifest(snapshot, resolved, mtimes, allow_patterns=requested, patterns=previous.patterns)
    log.info("reusing %s at pinned commit %s from the cache: verified, the Hub was not asked", repo, snapshot.name)
    return resolved


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported; a value set later (a Dagster run's
    # environment, a test) must count too, or a "switched off" Hub is still asked and times out.
    from medvec.settings import get_settings

    return bool(constants.HF_HUB_OFFLINE) or get_settings().hf_hub_offline


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors; huggingface_hub lets some (proxy errors) through unwrapped."""
    import sys

    found = [getattr(sys.modules.get(name), "TransportError", None) for name in ("httpx2", "httpx")]
    return tuple(e for e in found if isinstance(e, type)) or (ConnectionError,)


@contextmanager
def _hub_errors(repo: str, revision: str | None, hub_cache: Path, offline: bool, token: str | None) -> Iterator[None]:
    """Hub failures as `ModelFilesError`s that say what to do; never with the token in them."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    def reason(exc: BaseException) -> str:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].removeprefix("Got: ")[:200]
        return text.replace(token, "***") if token else text

    mirror = "mirror it to S3 or a local folder and set MEDVEC_MODEL_SOURCE=s3 or local with MEDVEC_MODEL_LOCATION"
    gated = f"{repo} is gated: accept its terms on huggingface.co and set HF_TOKEN" + (
        "" if token is None else " (the token in use has no access yet: accept the terms with its account)")

    def unreachable(exc: BaseException) -> ModelFilesError:
        if offline:
            at = f" at revision {revision}" if revision else ""
            return ModelFilesError(f"could not reach the Hugging Face Hub for {repo}: HF_HUB_OFFLINE is set and "
                                   f"{hub_cache} holds no complete copy of it{at}; download it there once with "
                                   f"network access, or {mirror}")
        return ModelFilesError(f"could not reach the Hugging Face Hub for {repo}: {reason(exc)}; {mirror}, or set "
                               f"HF_HUB_OFFLINE=1 with a populated cache ({hub_cache})")

    try:
        yield
    except GatedRepoError as exc:
        raise ModelFilesError(gated) from exc
    except RevisionNotFoundError as exc:
        raise ModelFilesError(f"revision {revision!r} of {repo} does not exist on the Hugging Face Hub; "
                              "fix MEDVEC_MODEL_REVISION") from exc
    except RepositoryNotFoundError as exc:
        raise ModelFilesError(f"{repo} was not found on the Hugging Face Hub, or it is private: check MEDVEC_MODEL, "
                              "or set HF_TOKEN to a token that can read it") from exc
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) in (401, 403):
            raise ModelFilesError(gated) from exc
        raise unreachable(exc) from exc
    except HFValidationError as exc:
        raise ModelFilesError(f"{repo!r} is not a Hugging Face model id (org/name): {reason(exc)}; "
                              "fix MEDVEC_MODEL") from exc
    except OSError as exc:
        if not isinstance(exc, ConnectionError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise ModelFilesError(f"could not store the files of {repo} in {hub_cache}: {exc.strerror}; free space "
                                  "there or make it writable (it lives under MEDVEC_HOME)") from exc
        raise unreachable(exc) from exc  # LocalEntryNotFoundError and friends: no network, no cached copy
    except _transport_errors() as exc:
        raise unreachable(exc) from exc
