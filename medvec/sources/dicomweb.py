"""A DICOMweb endpoint (Orthanc, dcm4chee, Google/AWS/Azure DICOM stores) as an image source: QIDO-RS
lists instances filtered by modality, study date range and an optional query; WADO-RS retrieves them,
through `dicomweb-client`. An instance's uri is its WADO-RS address, so a batch manifest names instances
and the usual normalisation path reads them like files; its SOPInstanceUID (the uri's last segment) is
what "already claimed" is decided on, so no instance is fetched into two batches.

Credentials (a bearer token, or user and password) come from the environment and never appear in a uri,
a log line or an error message.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

from medvec.settings import Settings, get_settings
from medvec.sources import ImageSource, SourceFile, SourceUnavailable

#: A manifest entry's size when the server does not say it before retrieval (QIDO-RS has no size).
UNKNOWN_SIZE = -1
_QIDO_PAGE = 500


@dataclass(frozen=True)
class DicomWebSettings:
    """MEDVEC_DICOMWEB_URL (the service root, e.g. http://orthanc:8042/dicom-web), MEDVEC_DICOMWEB_TOKEN
    (bearer) or MEDVEC_DICOMWEB_USER + MEDVEC_DICOMWEB_PASSWORD (basic), MEDVEC_DICOMWEB_MODALITIES
    (comma list, e.g. CR,DX), MEDVEC_DICOMWEB_QUERY (extra QIDO filters, `Key=value&Key=value`),
    MEDVEC_DICOMWEB_MAX_PER_TICK (instances opened per sensor tick), MEDVEC_DICOMWEB_CONCURRENCY
    (WADO requests in flight), MEDVEC_DICOMWEB_LOOKBACK_DAYS (days before the newest study date seen
    that every tick queries again, for studies that reach the archive late), MEDVEC_DICOMWEB_CONNECT_TIMEOUT_S
    and MEDVEC_DICOMWEB_READ_TIMEOUT_S (per request), MEDVEC_DICOMWEB_RETRIES (retries of one request
    after a refused or dropped connection or an HTTP 429/5xx, with backoff; never after a read timeout)."""

    url: str | None = None
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    modalities: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    max_per_tick: int = 2000
    concurrency: int = 8
    lookback_days: int = 1
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    retries: int = 2


def dicomweb_settings(environ: dict[str, str] | None = None) -> DicomWebSettings:
    """The archive's settings from `Settings` (this process's, or built from `environ`)."""
    settings = get_settings() if environ is None else Settings.from_env(environ)
    query = dict(part.split("=", 1) for part in settings.dicomweb_query.split("&") if "=" in part)
    modalities = tuple(m.strip().upper() for m in settings.dicomweb_modalities.split(",") if m.strip())
    secret = lambda value: value.get_secret_value() if value is not None else None  # noqa: E731
    return DicomWebSettings(
        url=(settings.dicomweb_url or "").rstrip("/") or None, token=secret(settings.dicomweb_token),
        user=settings.dicomweb_user, password=secret(settings.dicomweb_password),
        modalities=modalities, query=query, max_per_tick=settings.dicomweb_max_per_tick,
        concurrency=settings.dicomweb_concurrency, lookback_days=settings.dicomweb_lookback_days,
        connect_timeout_s=settings.dicomweb_connect_timeout_s, read_timeout_s=settings.dicomweb_read_timeout_s,
        retries=settings.dicomweb_retries)


@dataclass(frozen=True)
class InstanceQuery:
    """What to list: modalities (any of), a study date range (YYYYMMDD, either end open), extra filters."""

    modalities: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None
    filters: dict[str, str] = field(default_factory=dict)

    def qido_filters(self) -> list[dict[str, str]]:
        """One QIDO filter set per modality (multi-value matching is not supported everywhere)."""
        base = dict(self.filters)
        if self.date_from or self.date_to:
            base["StudyDate"] = f"{self.date_from or ''}-{self.date_to or ''}"
        return [{**base, "Modality": m} for m in self.modalities] or [base]


@dataclass(frozen=True)
class DicomWebInstance:
    """One listed instance: its WADO-RS uri, its SOPInstanceUID and its study date ('' when absent)."""

    uri: str
    sop_uid: str
    study_date: str

    def source_file(self) -> SourceFile:
        return SourceFile(uri=self.uri, size=UNKNOWN_SIZE)


def is_dicomweb_root(root: str) -> bool:
    return root.startswith(("http://", "https://"))


def sop_uid_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


class DicomWebSource(ImageSource):
    """A DICOMweb service root. `settings` supplies credentials and defaults; by default they are read
    from the environment, so worker processes (which open the source from a manifest's root) get them too."""

    #: Instances only: no dataset's published CSVs to detect or read beside them.
    holds_dataset_files = False

    def __init__(self, root: str, settings: DicomWebSettings | None = None):
        self.root = root.rstrip("/")
        self.settings = settings if settings is not None else dicomweb_settings()
        self._client = None

    def __getstate__(self):  # sessions do not pickle; worker processes make their own
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:  # never the credentials
        return f"DicomWebSource({self.root!r})"

    @property
    def client(self):
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient
            from dicomweb_client.session_utils import create_session, create_session_from_user_pass

            s = self.settings
            session = (create_session_from_user_pass(s.user, s.password) if s.user and s.password
                       else create_session())
            if s.token:
                session.headers["Authorization"] = f"Bearer {s.token}"
            # requests asks for gzip by default and Orthanc then compresses every instance on the fly:
            # measured 4-10x slower per instance on this machine (benchmarks/dicomweb.py), for pixel
            # data that is often compressed already.
            session.headers["Accept-Encoding"] = "identity"
            _bounded_retries(session, s.retries)
            client = DICOMwebClient(self.root, session=session, timeout=(s.connect_timeout_s, s.read_timeout_s))
            # The client's own retrying retries *every* exception 5 times with 2-16 s waits (30 s on a
            # refused connection); the session's urllib3 policy above is the only retry instead.
            client.set_http_retry_params(retry=False)
            self._client = client
        return self._client

    def default_query(self) -> InstanceQuery:
        return InstanceQuery(modalities=self.settings.modalities, filters=self.settings.query)

    def search_instances(self, query: InstanceQuery | None = None) -> Iterator[DicomWebInstance]:
        """Every instance matching `query` (QIDO-RS, paged), each once."""
        seen: set[str] = set()
        for filters in (query or self.default_query()).qido_filters():
            offset = 0
            while True:
                page = _guarded(lambda: self.client.search_for_instances(
                    fields=["StudyDate"], search_filters=filters, limit=_QIDO_PAGE, offset=offset), self.root)
                for entry in page:
                    instance = self._instance(entry)
                    if instance is not None and instance.sop_uid not in seen:
                        seen.add(instance.sop_uid)
                        yield instance
                if len(page) < _QIDO_PAGE:
                    break
                offset += len(page)

    def _instance(self, entry: dict) -> DicomWebInstance | None:
        def value(tag: str) -> str:
            values = entry.get(tag, {}).get("Value") or [""]
            return str(values[0])

        study, series, sop = value("0020000D"), value("0020000E"), value("00080018")
        if not (study and series and sop):
            return None
        return DicomWebInstance(uri=f"{self.root}/studies/{study}/series/{series}/instances/{sop}",
                                sop_uid=sop, study_date=value("00080020"))

    def list_files(self) -> Iterator[SourceFile]:
        for instance in sorted(self.search_instances(), key=lambda i: i.uri):
            yield instance.source_file()

    def read_bytes(self, uri: str) -> bytes:
        """The instance as a DICOM file (WADO-RS, any transfer syntax the server holds), byte for byte
        as the server sent the multipart part: no parse and re-encode (benchmarks/dicomweb.py)."""
        _uids(uri)  # a malformed uri is the caller's per-item error, before any request
        return _guarded(lambda: self._retrieve_part(uri), self.root)

    def _retrieve_part(self, uri: str) -> bytes:
        client = self.client
        if not hasattr(client, "_decode_multipart_message"):  # a dicomweb-client without it: parse, re-encode
            study, series, sop = _uids(uri)
            dataset = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
            buffer = io.BytesIO()
            dataset.save_as(buffer)
            return buffer.getvalue()
        # The client's own GET (its session, timeouts, error raising) and multipart decoder, minus the
        # pydicom round trip retrieve_instance adds.
        response = client._http_get(uri, headers={"Accept": _ACCEPT_ANY_DICOM})
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            return response.content  # a server that sends the part bare (allowed by Sup 183's error)
        parts = list(client._decode_multipart_message(response, stream=False))
        if len(parts) != 1:
            raise ValueError(f"the server sent {len(parts)} parts for one instance")
        return bytes(parts[0])

    def fetch_many(self, uris: list[str], concurrency: int | None = None) -> Iterator[tuple[str, bytes]]:
        """(uri, bytes) for each uri, with at most `concurrency` WADO requests in flight, in input order."""
        with ThreadPoolExecutor(max(1, concurrency or self.settings.concurrency)) as pool:
            yield from zip(uris, pool.map(self.read_bytes, uris))

    def stat(self, uri: str) -> SourceFile | None:
        return SourceFile(uri=uri, size=UNKNOWN_SIZE)


_ACCEPT_ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _bounded_retries(session, retries: int) -> None:
    """At most `retries` retries of one GET, only after a failed or dropped connection or an HTTP
    429/5xx (backoff 0, 1, 2 s…; a Retry-After header is honoured). A read timeout is not retried: the
    server is there but slow, and retrying would multiply the wait."""
    from requests.adapters import HTTPAdapter
    from urllib3.exceptions import ReadTimeoutError
    from urllib3.util.retry import Retry

    class NoRetryOnReadTimeout(Retry):
        def increment(self, *args, error=None, **kwargs):
            if isinstance(error, ReadTimeoutError):
                return Retry.increment(self.new(total=0, read=0), *args, error=error, **kwargs)
            return super().increment(*args, error=error, **kwargs)

    policy = NoRetryOnReadTimeout(total=retries, connect=retries, read=retries, other=0, status=retries,
                                  backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                                  allowed_methods=frozenset({"GET"}), raise_on_status=False)
    for prefix in ("http://", "https://"):
        session.mount(prefix, HTTPAdapter(max_retries=policy, pool_maxsize=32))


def _uids(uri: str) -> tuple[str, str, str]:
    parts = uri.rstrip("/").split("/")
    if len(parts) < 6 or parts[-6] != "studies" or parts[-4] != "series" or parts[-2] != "instances":
        raise ValueError("not a WADO-RS instance uri (…/studies/S/series/S/instances/I)")
    return parts[-5], parts[-3], parts[-1]


def _guarded(call, root: str):
    """Run one request; an unreachable server or a server error stops the caller (SourceUnavailable),
    a refused or missing instance is the caller's per-item error."""
    import requests

    try:
        return call()
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise SourceUnavailable(f"the DICOMweb server at {root} did not answer ({type(exc).__name__}); "
                                "check that it is running and reachable, then retry") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status in (401, 403):
            what = "refused the credentials (set MEDVEC_DICOMWEB_TOKEN or _USER/_PASSWORD)" \
                if status in (401, 403) else "failed"
            raise SourceUnavailable(f"the DICOMweb server at {root} {what} (HTTP {status})") from None
        raise
