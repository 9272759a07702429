"""A remote NVIDIA NIM (or `medvec embed-server`) as an `Embedder`, over `POST /v1/embeddings`.

The request holds exactly `input`, `model` and `encoding_format` (NIM rejects anything else);
at most 64 inputs go in one request; 429, 5xx, timeouts and malformed answers are retried with
exponential backoff and full jitter, honouring Retry-After; a batch either fully succeeds or
raises, so nothing half-embedded is ever written.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import requests
from PIL import Image

from medvec.embedders.base import Embedder, EmbedderError, l2_normalize

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
PLAIN_ERRORS = {
    401: "NVIDIA_API_KEY is missing or invalid for {url}",
    402: "the NIM account at {url} is out of credits",
    403: "NVIDIA_API_KEY is not allowed to use {model} at {url}",
    404: "model {model} is not served at {url}: check MEDVEC_NIM_MODEL and MEDVEC_NIM_URL",
}


@dataclass(frozen=True)
class PngDataUri:
    """Normalised image bytes → `data:image/png;base64,...` (NIM takes PNG or JPEG only)."""

    def __call__(self, data: bytes) -> str:
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class _Retryable(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason, self.wait_s = reason, wait_s


class NimEmbedder(Embedder):
    def __init__(self, url: str, model: str, *, api_key: str | None = None, dim: int | None = None,
                 name: str = "nvclip", timeout_s: float = 60.0, max_batch: int = 64, concurrency: int = 4,
                 max_retries: int = 6, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0):
        self.url, self.model_id, self.name, self.revision = url.rstrip("/"), model, name, None
        self.dim = dim
        self.timeout_s, self.max_batch, self.concurrency = timeout_s, min(max_batch, 64), concurrency
        self.max_retries, self.backoff_base_s, self.backoff_max_s = max_retries, backoff_base_s, backoff_max_s
        self._api_key = api_key
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="nim")

    def __repr__(self) -> str:  # never shows the key
        return f"NimEmbedder(url={self.url!r}, model={self.model_id!r}, dim={self.dim})"

    def image_preparer(self) -> PngDataUri:
        return PngDataUri()

    def embed_prepared(self, prepared: Sequence[str]) -> np.ndarray:
        return self._embed(list(prepared))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts))

    def ready(self, timeout: float = 10.0) -> tuple[bool, str]:
        try:
            answer = self._session().get(f"{self.url}/v1/health/ready", timeout=timeout)
        except requests.RequestException as exc:
            return False, f"no answer from {self.url}: {type(exc).__name__}"
        if answer.status_code == 200:
            return True, answer.json().get("message", "ready") if _is_json(answer) else "ready"
        return False, f"HTTP {answer.status_code} from /v1/health/ready"

    def runtime(self) -> dict:
        return {"url": self.url, "model": self.model_id, "concurrency": self.concurrency, "max_batch": self.max_batch}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- internals ---------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self._api_key:
                session.headers["Authorization"] = f"Bearer {self._api_key}"
        return session

    def _embed(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim or 0), np.float32)
        chunks = [inputs[i:i + self.max_batch] for i in range(0, len(inputs), self.max_batch)]
        results = list(self._pool.map(self._post_with_retries, chunks))  # raises the first failure
        vectors = np.concatenate(results)
        if self.dim is None:
            self.dim = vectors.shape[1]
        return l2_normalize(vectors)

    def _post_with_retries(self, chunk: list[str]) -> np.ndarray:
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(chunk)
            except _Retryable as retry:
                last = retry.reason
                if attempt == self.max_retries:
                    break
                wait = retry.wait_s if retry.wait_s is not None else random.uniform(
                    0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))
                log.info("NIM %s; retry %d/%d in %.2fs", retry.reason, attempt + 1, self.max_retries, wait)
                time.sleep(min(wait, self.backoff_max_s))
        raise EmbedderError(f"NIM at {self.url} kept failing ({last}) after {self.max_retries} retries; "
                            "lower the concurrency, raise the rate limit, or check the server")

    def _post(self, chunk: list[str]) -> np.ndarray:
        body = {"input": chunk, "model": self.model_id, "encoding_format": "float"}
        try:
            answer = self._session().post(f"{self.url}/v1/embeddings", json=body, timeout=self.timeout_s)
        except requests.Timeout:
            raise _Retryable(f"no answer within {self.timeout_s:g}s") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        status = answer.status_code
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status} {answer.reason}", _retry_after(answer))
        if status in PLAIN_ERRORS:
            raise EmbedderError(PLAIN_ERRORS[status].format(url=self.url, model=self.model_id))
        if status == 422:
            raise EmbedderError(f"NIM rejected the request: {_detail(answer)}")
        if status != 200:
            raise EmbedderError(f"NIM answered HTTP {status}: {_detail(answer)}")
        try:
            data = answer.json()["data"]
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in ordered], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retryable(f"malformed answer ({type(exc).__name__})") from None
        if [item["index"] for item in ordered] != list(range(len(chunk))) or vectors.ndim != 2:
            raise EmbedderError(f"NIM returned {len(data)} embeddings for {len(chunk)} inputs; nothing was kept")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise EmbedderError(f"NIM returned {vectors.shape[1]}-d embeddings but {self.dim}-d were expected "
                                f"(model {self.model_id}); nothing was kept")
        return vectors


def _is_json(answer: requests.Response) -> bool:
    return answer.headers.get("content-type", "").startswith("application/json")


def _retry_after(answer: requests.Response) -> float | None:
    try:
        return max(0.0, float(answer.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _detail(answer: requests.Response) -> str:
    try:
        payload = answer.json()
        return str(payload.get("detail") or payload.get("message") or payload)[:300]
    except ValueError:
        return answer.text[:300]
