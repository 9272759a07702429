"""What a search answers with, and what it refuses: filters, hits, results and the input errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_K = 500


class SearchInputError(ValueError):
    """The request cannot be answered as asked (bad image, unknown id, bad filter): say why."""


class NoSuchImage(SearchInputError):
    pass


class NotIndexed(RuntimeError):
    """The model's table does not exist yet: nothing has been embedded with this model."""


@dataclass(frozen=True)
class Filters:
    """Metadata constraints; each list is any-of, and the lists are ANDed."""

    view: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()  # male | female | other
    age_group: tuple[str, ...] = ()  # as stored ("40-49", "AGE_30_TO_39")
    skin_type: tuple[str, ...] = ()  # Fitzpatrick, as stored ("FST3")

    @classmethod
    def of(cls, view=None, modality=None, split=None, labels=None, sex=None, age_group=None,
           skin_type=None) -> "Filters":
        def clean(values):
            if values is None:
                return ()
            if isinstance(values, str):
                values = [values]
            return tuple(sorted({str(v).strip() for v in values if str(v).strip()}))

        return cls(view=tuple(v.upper() for v in clean(view)), modality=tuple(m.upper() for m in clean(modality)),
                   split=clean(split), labels=clean(labels), sex=tuple(v.lower() for v in clean(sex)),
                   age_group=tuple(v.upper() for v in clean(age_group)),
                   skin_type=tuple(v.upper() for v in clean(skin_type)))

    def __bool__(self) -> bool:
        return any(self.__dict__.values())

    def to_json(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items() if v}


@dataclass
class Hit:
    image_id: str
    score: float
    rank: int
    metadata: dict

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "score": round(float(self.score), 6), "rank": self.rank, **self.metadata}


@dataclass
class SearchResult:
    hits: list[Hit]
    route: str  # fallback | index | similar_images | exact ...
    model: str
    table: str
    table_version: int
    took_ms: float
    query: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        from medvec.models.registry import quality_note

        return {"model": self.model, "model_note": quality_note(self.model), "table": self.table,
                "table_version": self.table_version,
                "route": self.route, "took_ms": round(self.took_ms, 3), "query": self.query,
                "hits": [h.to_json() for h in self.hits]}


def normalize_query_text(text: str) -> str:
    """The key fallback answers are stored under: case, spacing and trailing punctuation ignored."""
    return re.sub(r"\s+", " ", re.sub(r"[.,;:!?]+$", "", text.strip().lower()))


def check_k(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise SearchInputError(f"k must be a whole number, not {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise SearchInputError(f"k must be between 1 and {MAX_K}")
    return k
