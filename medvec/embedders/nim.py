"""A remote NVIDIA NIM (or our own `medvec embed-server`) as an `Embedder`, over `POST /v1/embeddings`.

Each request holds exactly `input`, `model` and `encoding_format`, because NIM's schema rejects
any other property; at most 64 inputs go in one request (NIM's `maxItems`). 429, 5xx, timeouts,
dropped connections and malformed answers are retried with exponential backoff and full jitter,
honouring Retry-After. A call either returns every vector or raises: nothing half-embedded is
ever handed back.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
from PIL import Image

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize

log = logging.getLogger(__name__)

MAX_INPUTS = 64  # NIM's `maxItems` for `input`
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_DETAIL_CHARS = 300


def png_data_uri(image_bytes: bytes) -> str:
    """Normalised image bytes (WebP/PNG) → `data:image/png;base64,...`.

    NIM takes only PNG and JPEG; PNG keeps the normalised pixels exactly. Grey radiographs are
    replicated to RGB because NV-CLIP's preprocessing expects three channels.
    """
    with Image.open(io.BytesIO(image_bytes)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Retryable(Exception):
    """A failure worth another try; `doing` and `advice` word the final error if tries run out."""

    def __init__(self, doing: str, advice: str, wait_s: float | None = None):
        super().__init__(doing)
        self.doing, self.advice, self.wait_s = doing, advice, wait_s


class _Abandoned(Exception):
    """Another chunk of the same call failed, so this one stops retrying."""


class NimEmbedder(Embedder):
    """L2-normalised float32 vectors from a NIM speaking the NV-CLIP embeddings protocol.

    `url` is the server's base (`http://gpu-box:8000`); a trailing `/v1` (as in NVIDIA's hosted
    examples) is accepted too. Texts go as plain strings, images as PNG data URIs
    (`image_preparer()`), so image preparation can run in worker processes.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, dim: int | None = None,
                 name: str = "nvclip", timeout_s: float = 60, max_batch: int = 64, concurrency: int = 4,
                 max_retries: int = 6, backoff_base_s: float = 0.5, backoff_max_s: float = 30,
                 clock: Callable[[], float] = time.time):
        if not 1 <= max_batch <= MAX_INPUTS:
            raise ValueError(f"max_batch must be between 1 and {MAX_INPUTS} (NIM's limit), not {max_batch}")
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be at least 1 and max_retries at least 0")
        self.url = _base_url(url)
        self.model_id, self.name, self.revision = model, name, None
        self.dim = dim  # None: learnt from the first answer, then every answer must match it
        self.timeout_s, self.max_batch, self.concurrency = timeout_s, max_batch, concurrency
        self.max_retries, self.backoff_base_s, self.backoff_max_s = max_retries, backoff_base_s, backoff_max_s
        self._api_key = api_key
        self._clock = clock  # the wall clock a Retry-After date is counted from
        self._shown_url = without_credentials(self.url)  # what logs and errors may show
        self._dim_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # requests.Session is not documented as thread-safe, so each pool thread keeps its own
        # (each still reuses its keep-alive connection).
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def __repr__(self) -> str:
        return f"NimEmbedder(url={self._shown_url!r}, model={self.model_id!r}, dim={self.dim})"

    # --- Embedder ------------------------------------------------------------------------------

    def image_preparer(self):
        return png_data_uri

    def embed_prepared(self, prepared: Sequence[str]) -> np.ndarray:
        return self._embed(list(prepared))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts))

    def runtime(self) -> dict[str, Any]:
        return {"url": self._shown_url, "model": self.model_id, "concurrency": self.concurrency,
                "max_batch": self.max_batch}

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for session in sessions:
            session.close()

    def ready(self, timeout: float = 10) -> tuple[bool, str]:
        """Probe `GET /v1/health/ready`: (True, the server's message) or (False, why not, in plain words).

        A server without the health route (404) counts as ready when `GET /v1/models` lists the model.
        """
        try:
            answer = requests.get(f"{self.url}/v1/health/ready", headers=self._auth(), timeout=timeout)
            if answer.status_code == 200:
                return True, self._scrub(_message(answer)) or "ready"
            if answer.status_code == 404:
                return self._listed(timeout)
        except requests.RequestException as exc:
            return False, f"nothing answers at {self._shown_url} ({type(exc).__name__})"
        return False, (f"{self._shown_url} is not ready: /v1/health/ready answered {answer.status_code}"
                       f" {answer.reason} ({self._scrub(_message(answer) or _detail(answer))})")

    # --- sending ------------------------------------------------------------------------------

    def _listed(self, timeout: float) -> tuple[bool, str]:
        answer = requests.get(f"{self.url}/v1/models", headers=self._auth(), timeout=timeout)
        if answer.status_code != 200:
            return False, f"{self._shown_url} has neither /v1/health/ready nor /v1/models (HTTP {answer.status_code})"
        try:
            served = [str(model.get("id")) for model in answer.json().get("data", [])]
        except (ValueError, AttributeError, TypeError):
            return False, f"{self._shown_url}/v1/models is not a NIM model list"
        if self.model_id in served:
            return True, f"{self.model_id} is listed at /v1/models"
        return False, f"{self.model_id} is not among the models served at {self._shown_url}: {', '.join(served)}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._auth())
            self._local.session = session
            with self._pool_lock:
                self._sessions.append(session)
        return session

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="nim")
            return self._pool

    def _embed(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim or 0), np.float32)
        chunks = [inputs[i:i + self.max_batch] for i in range(0, len(inputs), self.max_batch)]
        abandon = threading.Event()
        # Even a single chunk goes through the pool: only its `concurrency` threads ever hold a
        # session, however many threads (e.g. a search server's) call this embedder.
        pool = self._executor()
        futures: list[Future] = [pool.submit(self._post_with_retries, chunk, abandon) for chunk in chunks]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            return l2_normalize(np.concatenate([future.result() for future in futures]))
        finally:
            # A half-failed call raises: the other chunks stop retrying rather than finish unseen.
            abandon.set()
            for future in futures:
                future.cancel()

    def _post_with_retries(self, chunk: list[str], abandon: threading.Event) -> np.ndarray:
        for attempt in range(self.max_retries + 1):
            if abandon.is_set():
                raise _Abandoned()
            try:
                return self._post(chunk)
            except _Retryable as retry:
                if attempt == self.max_retries:
                    raise EmbedderError(f"NIM at {self._shown_url} kept {retry.doing} after {self.max_retries} "
                                        f"retries; {retry.advice}") from None
                ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
                pause = min(retry.wait_s, self.backoff_max_s) if retry.wait_s is not None else random.uniform(0, ceiling)
                log.info("NIM at %s was %s; retry %d of %d in %.2f s", self._shown_url, retry.doing, attempt + 1,
                         self.max_retries, pause)
                abandon.wait(pause)
        raise AssertionError("unreachable")

    def _post(self, chunk: list[str]) -> np.ndarray:
        body = {"input": chunk, "model": self.model_id, "encoding_format": "float"}
        try:
            answer = self._session().post(f"{self.url}/v1/embeddings", json=body, timeout=self.timeout_s)
        except requests.Timeout:
            raise _Retryable(f"giving no answer within {self.timeout_s:g} s",
                             "raise the timeout or lower concurrency / batch size") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retryable(f"dropping or refusing connections ({type(exc).__name__})",
                             "check that the server runs and MEDVEC_NIM_URL points at it") from None
        except requests.RequestException as exc:
            raise EmbedderError(f"cannot send to {self._shown_url} ({type(exc).__name__}); "
                                "check MEDVEC_NIM_URL") from None
        status = answer.status_code
        if status in RETRYABLE_STATUS:
            advice = ("lower concurrency or raise the rate limit" if status == 429
                      else "check the server's logs and /v1/health/ready")
            raise _Retryable(f"answering {status} {answer.reason}", advice, _retry_after(answer, self._clock()))
        if status != 200:
            raise EmbedderError(self._refusal(answer))
        try:
            data = answer.json()["data"]
            indices = [item["index"] for item in data]
            rows = [item["embedding"] for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retryable(f"sending malformed answers ({type(exc).__name__})",
                             "check that MEDVEC_NIM_URL points at a NIM embeddings service") from None
        return self._checked(chunk, indices, rows)

    def _checked(self, chunk: list[str], indices: list, rows: list) -> np.ndarray:
        """The answer's vectors in input order, or an EmbedderError if it is not one vector per input."""
        if (len(rows) != len(chunk) or not all(type(i) is int for i in indices)
                or sorted(indices) != list(range(len(chunk)))):
            raise EmbedderError(f"NIM at {self._shown_url} returned {len(rows)} embeddings (indices "
                                f"{_span(indices)}) for {len(chunk)} inputs; nothing was kept")
        ordered = [row for _, row in sorted(zip(indices, rows), key=lambda pair: pair[0])]
        if not all(isinstance(row, list) and row for row in ordered):
            raise EmbedderError(f"NIM at {self._shown_url} did not return lists of floats (asked for "
                                "encoding_format float); nothing was kept")
        lengths = {len(row) for row in ordered}
        with self._dim_lock:
            if self.dim is None and len(lengths) == 1:
                (self.dim,) = lengths
                log.info("NIM at %s gives %d-d embeddings for %s", self._shown_url, self.dim, self.model_id)
            expected = self.dim
        if lengths != {expected}:
            got = "/".join(str(n) for n in sorted(lengths))
            wanted = f"{expected}-d were expected" if expected else "one length was expected"
            raise EmbedderError(f"NIM at {self._shown_url} returned {got}-d embeddings but {wanted} "
                                f"(model {self.model_id}); nothing was kept. Check MEDVEC_NIM_MODEL and "
                                "that the table was built with the same model")
        try:
            vectors = np.asarray(ordered, dtype=np.float32)
        except (ValueError, TypeError):
            raise EmbedderError(f"NIM at {self._shown_url} returned non-numeric embeddings; nothing was kept") from None
        if not np.isfinite(vectors).all():
            raise EmbedderError(f"NIM at {self._shown_url} returned NaN or infinite values; nothing was kept")
        return vectors

    def _refusal(self, answer: requests.Response) -> str:
        status, url = answer.status_code, self._shown_url
        if status == 401:
            if not self._api_key:
                return f"NIM at {url} needs an API key (401): set NVIDIA_API_KEY"
            return f"NIM at {url} refused the key (401 Unauthorized): NVIDIA_API_KEY missing or invalid"
        if status == 403:
            return f"NIM at {url} does not let this NVIDIA_API_KEY use {self.model_id} (403 Forbidden)"
        if status == 402:
            return f"NIM at {url}: account out of credits (402 Payment Required); add credits or self-host the NIM"
        if status == 404:
            return (f"model {self.model_id} not served at {url} (404) — check MEDVEC_NIM_MODEL / MEDVEC_NIM_URL")
        detail = self._scrub(_detail(answer))
        if status == 422:
            return f"NIM rejected the request: {detail}"
        return f"NIM at {url} answered {status} {answer.reason}: {detail}"

    def _scrub(self, text: str) -> str:
        """Server-supplied text could echo a header; the key must never reach an error or a log."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    for suffix in ("/v1/embeddings", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def _retry_after(answer: requests.Response, now: float) -> float | None:
    """Retry-After in seconds: either a number or an HTTP date (RFC 9110), counted from `now` (epoch s)."""
    value = answer.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _message(answer: requests.Response) -> str:
    try:
        payload = answer.json()
    except ValueError:
        return ""
    return str(payload.get("message", "")) if isinstance(payload, dict) else ""


def _detail(answer: requests.Response) -> str:
    """NVCF problem details (`detail`), FastAPI's `detail` list, or the raw text, kept short."""
    try:
        payload = answer.json()
    except ValueError:
        return answer.text[:_DETAIL_CHARS] or answer.reason
    if isinstance(payload, dict):
        payload = payload.get("detail") or payload.get("message") or payload.get("title") or payload
    if isinstance(payload, list):  # FastAPI/pydantic: [{"loc": [...], "msg": "..."}]
        payload = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in payload)
    return str(payload)[:_DETAIL_CHARS]


def _span(indices: list) -> str:
    if not indices:
        return "none"
    if all(type(i) is int for i in indices):
        return f"{min(indices)}..{max(indices)}" + (", some repeated" if len(set(indices)) < len(indices) else "")
    return "not all integers"
