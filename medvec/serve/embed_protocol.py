"""The NV-CLIP NIM embeddings protocol as `medvec embed-server` speaks it: request validation, the
answer's shape and NVCF-style problem details, with no HTTP framework in sight."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

import numpy as np
from PIL import UnidentifiedImageError

from medvec.embedders.nim import MAX_INPUTS  # the protocol's limit, one place for client and server

# NV-CLIP's EmbeddingsRequest schema: these properties only (`additionalProperties: false`), <= 64 inputs.
ALLOWED_PROPERTIES = frozenset({"input", "model", "encoding_format"})
ENCODINGS = ("float", "base64")
# NIM accepts jpg, png and jpeg data URIs; anything else is refused, so a client tested here works there.
_IMAGE_URI = re.compile(r"data:image/(png|jpe?g);base64,(.*)", re.DOTALL)
MAX_BODY_BYTES = 256 * 2**20  # 64 large PNGs fit; a runaway upload does not


class InvalidRequest(ValueError):
    """A request NIM would answer with 422; the message says what is wrong."""


@dataclass
class Job:
    """One request's inputs, split by kind but remembering each input's position; `done` gets its vectors."""

    texts: list[tuple[int, str]]
    images: list[tuple[int, Any]]  # (position, what the embedder's image_preparer returned)
    done: asyncio.Future | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.texts) + len(self.images)


def parse_request(body: Any, model_id: str, prepare: Callable[[bytes], Any]) -> tuple[Job, str]:
    """A validated job and the encoding format, or `InvalidRequest` (422) / `LookupError` (404)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with input, model and encoding_format")
    extra = sorted(set(body) - ALLOWED_PROPERTIES)
    if extra:
        raise InvalidRequest(f"additional properties are not allowed: {', '.join(extra)} "
                             f"(allowed: {', '.join(sorted(ALLOWED_PROPERTIES))})")
    if "model" not in body or "input" not in body:
        raise InvalidRequest("input and model are required")
    if body["model"] != model_id:
        raise LookupError(f"model {body['model']!r} is not served here; this server serves {model_id!r}")
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise InvalidRequest(f"encoding_format must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest("input must be a string or a non-empty list of strings")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"input holds {len(inputs)} items; at most {MAX_INPUTS} are allowed")
    texts, images = [], []
    for position, item in enumerate(inputs):
        if item.startswith("data:"):
            images.append((position, _prepared_image(position, item, prepare)))
        else:
            texts.append((position, item))
    return Job(texts, images), encoding


def _prepared_image(position: int, uri: str, prepare: Callable[[bytes], Any]) -> Any:
    match = _IMAGE_URI.fullmatch(uri)
    if match is None:
        raise InvalidRequest(f"input[{position}] is not a data:image/png|jpeg|jpg;base64 URI")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"input[{position}] does not hold valid base64") from None
    try:
        return prepare(raw)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"input[{position}] is not a readable PNG or JPEG image ({type(exc).__name__})") from None


def embeddings_response(job: Job, vectors: np.ndarray, encoding: str, model_id: str) -> dict:
    """NIM's answer: `data` in input order, `usage` counting images and (whitespace) tokens."""
    if encoding == "base64":  # OpenAI/NIM convention: little-endian float32 bytes
        encoded = [base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in vectors]
    else:
        encoded = [vector.tolist() for vector in vectors]
    data = [{"index": i, "embedding": vector, "object": "embedding"} for i, vector in enumerate(encoded)]
    # This server has no tokenizer of its own; whitespace words stand in for prompt tokens.
    tokens = sum(len(text.split()) for _, text in job.texts)
    usage = {"num_images": len(job.images), "prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model_id, "usage": usage}


def problem(status: int, detail: str) -> dict:
    """NVCF-style problem details, as NIM sends with 4xx/5xx."""
    return {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}


def health(message: str) -> dict:
    return {"object": "health.response", "message": message}
