"""Report-like sentences for a synthetic chest image, drawn from what the image shows.

Each caption also says what it claims (its findings, and the view when it names one), so training can
treat every image that shows those findings as a match, not only the image it was written for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NORMAL = ("no acute cardiopulmonary process", "normal chest x-ray", "no finding", "clear lungs",
          "no acute cardiopulmonary abnormality", "heart size is normal and the lungs are clear")
CARDIOMEGALY = ("cardiomegaly", "enlarged cardiac silhouette", "mild cardiomegaly", "the heart is enlarged",
                "enlarged heart", "moderate cardiomegaly")
NORMAL_HEART = ("heart size is normal", "normal cardiac silhouette")
EFFUSION_ANY = ("pleural effusion", "pleural effusions", "blunted costophrenic angle")
EFFUSION_SIDE = {
    ("left",): ("small left pleural effusion", "left pleural effusion", "left basilar pleural effusion"),
    ("right",): ("right pleural effusion", "large right pleural effusion", "small right pleural effusion"),
    ("left", "right"): ("bilateral pleural effusions", "bilateral pleural effusion"),
}
NO_EFFUSION = ("no pleural effusion",)
VIEW_WORDS = {"frontal": ("frontal chest radiograph", "pa view", "ap view", "frontal view"),
              "lateral": ("lateral chest x-ray", "lateral view", "lateral radiograph")}


@dataclass(frozen=True)
class Caption:
    text: str
    cardiomegaly: bool
    effusion: str  # "none" | "any" | "left" | "right" | "both"
    view: str | None  # "frontal" | "lateral" | None when the text names no view


def effusion_key(sides: tuple[str, ...]) -> str:
    return {(): "none", ("left",): "left", ("right",): "right"}.get(tuple(sorted(sides)), "both")


def caption_for(cardiomegaly: bool, sides: tuple[str, ...], view: str, rng: np.random.Generator) -> Caption:
    """One sentence true of the image; sometimes naming the view, sometimes the heart or side."""
    sides = tuple(sorted(sides))
    parts, effusion = [], effusion_key(sides)
    if not cardiomegaly and not sides:
        parts.append(_pick(NORMAL, rng))
    if cardiomegaly:
        parts.append(_pick(CARDIOMEGALY, rng))
    elif sides and rng.random() < 0.3:
        parts.append(_pick(NORMAL_HEART, rng))
    if sides:
        if rng.random() < 0.5:
            parts.append(_pick(EFFUSION_SIDE[sides], rng))
        else:
            parts.append(_pick(EFFUSION_ANY, rng))
            effusion = "any"
    elif cardiomegaly and rng.random() < 0.3:
        parts.append(_pick(NO_EFFUSION, rng))
    named_view = None
    if rng.random() < 0.25:
        named_view = "lateral" if view == "LATERAL" else "frontal"
        parts.insert(0, _pick(VIEW_WORDS[named_view], rng))
    order = rng.permutation(len(parts)) if rng.random() < 0.3 else np.arange(len(parts))
    return Caption(" and ".join(parts[i] for i in order), cardiomegaly, effusion, named_view)


def matches(caption: Caption, cardiomegaly: bool, sides: tuple[str, ...], view: str) -> bool:
    """Whether the caption is true of an image showing these findings in this view."""
    actual = effusion_key(sides)
    effusion_ok = caption.effusion == actual or (caption.effusion == "any" and actual != "none")
    view_ok = caption.view is None or caption.view == ("lateral" if view == "LATERAL" else "frontal")
    return caption.cardiomegaly == cardiomegaly and effusion_ok and view_ok


def vocabulary() -> list[str]:
    """Every word a caption, an evaluation prompt or a precomputed query uses (the tokenizer's vocabulary)."""
    from medvec.evaluation.retrieval import FINDING_PROMPTS
    from medvec.search.precompute import FALLBACK_QUERIES

    texts = [*NORMAL, *CARDIOMEGALY, *NORMAL_HEART, *EFFUSION_ANY, *NO_EFFUSION, *FALLBACK_QUERIES,
             *(t for group in EFFUSION_SIDE.values() for t in group),
             *(t for group in VIEW_WORDS.values() for t in group),
             *(t for prompts in FINDING_PROMPTS.values() for t in prompts), "and", "with", "without", "there is"]
    # The same split as the tokenizer's Whitespace pre-tokenizer, so "x-ray" is "x", "-", "ray".
    return sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]+", text.lower())})


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
