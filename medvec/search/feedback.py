"""The query vector of a refined search: an image and a text combined ("this image, with effusion"),
then moved by relevance feedback (Rocchio) toward the hits a user marked relevant and away from the
ones marked not relevant. Everything happens on the in-memory vectors of `ImageSearch`; nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvec.embedders.base import l2_normalize
from medvec.search.results import NoSuchImage, SearchInputError

#: Share of the text in an image + text query. Image→image cosines run far above image→text ones in
#: CLIP-style spaces, so an even split on unit vectors still lets the image decide the neighbourhood
#: while the text pulls the ranking toward its finding.
TEXT_WEIGHT = 0.5
#: Rocchio's weights (a on the query, b on the mean of relevant hits, c on the mean of non-relevant
#: ones): the textbook defaults (Manning, Raghavan & Schütze, ch. 9), negative feedback kept weak.
ROCCHIO = (1.0, 0.75, 0.15)
MAX_MARKED = 100


@dataclass(frozen=True)
class Refinement:
    """What refines a query: a text to mix with an image, and the hits marked (not) relevant."""

    text_weight: float = TEXT_WEIGHT
    relevant: tuple[str, ...] = ()
    not_relevant: tuple[str, ...] = ()
    rocchio: tuple[float, float, float] = ROCCHIO

    @classmethod
    def of(cls, text_weight=None, relevant=None, not_relevant=None) -> "Refinement":
        weight = TEXT_WEIGHT if text_weight is None else float(text_weight)
        if not 0.0 <= weight <= 1.0:
            raise SearchInputError("text_weight must be between 0 and 1")
        relevant, not_relevant = tuple(dict.fromkeys(relevant or ())), tuple(dict.fromkeys(not_relevant or ()))
        if len(relevant) + len(not_relevant) > MAX_MARKED:
            raise SearchInputError(f"at most {MAX_MARKED} hits can be marked relevant or not relevant")
        if set(relevant) & set(not_relevant):
            raise SearchInputError("a hit cannot be marked both relevant and not relevant")
        return cls(text_weight=weight, relevant=relevant, not_relevant=not_relevant)

    def to_json(self) -> dict:
        return {"text_weight": self.text_weight, "relevant": list(self.relevant),
                "not_relevant": list(self.not_relevant)}


def combine(image_vector: np.ndarray, text_vector: np.ndarray, text_weight: float = TEXT_WEIGHT) -> np.ndarray:
    """The unit vector of (1 - w)·image + w·text, both unit-normalised first."""
    image_vector, text_vector = _unit(image_vector), _unit(text_vector)
    return _unit((1.0 - text_weight) * image_vector + text_weight * text_vector)


def rocchio(query: np.ndarray, relevant: np.ndarray, not_relevant: np.ndarray,
            weights: tuple[float, float, float] = ROCCHIO) -> np.ndarray:
    """q' = a·q + b·mean(relevant) − c·mean(not relevant), unit-normalised; an empty set adds nothing."""
    a, b, c = weights
    moved = a * _unit(query)
    if len(relevant):
        moved = moved + b * np.asarray(relevant, dtype=np.float32).mean(axis=0)
    if len(not_relevant):
        moved = moved - c * np.asarray(not_relevant, dtype=np.float32).mean(axis=0)
    return _unit(moved)


def query_vector(search, *, text: str | None = None, image: bytes | None = None, filename: str = "query",
                 image_id: str | None = None, refinement: Refinement = Refinement()) -> np.ndarray:
    """The vector a refined search ranks by: text, an uploaded image, a stored image, an image and a text
    combined, or no query at all but marked hits; then Rocchio when hits are marked."""
    text = (text or "").strip() or None
    if image is not None and image_id is not None:
        raise SearchInputError("give an uploaded image or an image_id, not both")
    image_vec = search.image_vector(image, filename) if image is not None else (
        stored_vectors(search, [image_id])[0] if image_id is not None else None)
    text_vec = search.text_vector(text)[0] if text is not None else None
    if image_vec is not None and text_vec is not None:
        query = combine(image_vec, text_vec, refinement.text_weight)
    elif image_vec is not None or text_vec is not None:
        query = _unit(image_vec if image_vec is not None else text_vec)
    elif refinement.relevant:  # "more like these" on its own
        query = np.zeros(search.snapshot().index.vectors.shape[1], dtype=np.float32)
    else:
        raise SearchInputError("give a text, an image, an image_id or hits marked relevant")
    if refinement.relevant or refinement.not_relevant:
        query = rocchio(query, stored_vectors(search, refinement.relevant),
                        stored_vectors(search, refinement.not_relevant), refinement.rocchio)
    return query


def stored_vectors(search, image_ids) -> np.ndarray:
    """The stored (unit) vectors of these images, from the loaded table."""
    loaded = search.snapshot()
    rows = []
    for image_id in image_ids:
        row = loaded.row_of.get(image_id)
        if row is None:
            raise NoSuchImage(f"no image {image_id!r} in {search.table_name}")
        rows.append(row)
    return loaded.index.vectors[rows] if rows else np.empty((0, loaded.index.vectors.shape[1]), np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
