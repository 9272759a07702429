"""Training pairs for the demo model: synthetic chest images as ingest would store them, with captions.

Images come from the sample-data painter (`medvec.sample`) with findings, views and heart sizes drawn
at random, rendered to 8-bit grey with a random window and gamma (as the varied VOI settings of real
files render), then prepared by the embedder's own `PixelPreparer`, exactly as at embedding time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from medvec.models.demo_clip.captions import Caption, caption_for

VIEWS = ("PA", "AP", "LATERAL")
SIDES = ((), ("left",), ("right",), ("left", "right"))


@dataclass(frozen=True)
class TrainingImage:
    pixels: np.ndarray  # float32 (3, size, size), prepared for the model
    cardiomegaly: bool
    sides: tuple[str, ...]
    view: str
    caption: Caption


def random_spec(index: int, rng: np.random.Generator):
    """A painter spec with random findings and anatomy; encoding fields are fixed (we render directly)."""
    from medvec.sample.plan import ChestSpec

    cardiomegaly = bool(rng.random() < 0.4)
    sides = SIDES[int(rng.choice(4, p=(0.5, 0.17, 0.17, 0.16)))]
    ctr = float(rng.uniform(0.585, 0.66) if cardiomegaly else rng.uniform(0.42, 0.48))
    rows = int(rng.integers(128, 176))  # the model sees 96 px: painting larger only costs time
    columns = int(rows * rng.uniform(0.8, 1.05))
    return ChestSpec(index=index, patient=index + 1, study=0, view=VIEWS[int(rng.choice(3, p=(0.4, 0.3, 0.3)))],
                     cardiomegaly=cardiomegaly, effusion_sides=sides, ctr=ctr, rows=rows, columns=columns,
                     modality="DX", photometric="MONOCHROME2", bits_stored=8, signed=False, rescale=None,
                     window="none", transfer_syntax="1.2.840.10008.1.2.1")


def render_grey(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Display-semantics image in [0, 1] → 8-bit grey with a random window and gamma."""
    low, high = np.percentile(image, (rng.uniform(0.0, 2.0), rng.uniform(98.0, 100.0)))
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    return Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L")


def training_images(count: int, seed: int, preparer) -> list[TrainingImage]:
    """`count` prepared images with one caption each; the same seed gives the same list."""
    from medvec.sample.painter import draw_chest

    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        spec = random_spec(index + seed * 1_000_000, rng)
        grey = render_grey(draw_chest(spec), rng)
        caption = caption_for(spec.cardiomegaly, spec.effusion_sides, spec.view, rng)
        out.append(TrainingImage(preparer.from_image(grey), spec.cardiomegaly, tuple(sorted(spec.effusion_sides)),
                                 spec.view, caption))
    return out
