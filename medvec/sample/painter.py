"""The synthetic chest painter: attenuation images in [0, 1] whose anatomy matches each plan's findings
(heart size by its cardiothoracic ratio, effusions by side), and the stored values a detector would write."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medvec.sample.plan import SEED, ChestSpec


def cardiothoracic_ratio(spec: ChestSpec) -> float:
    """Ground-truth CTR (max heart width / max inner thoracic width) the heart was drawn with.

    Frontal views draw exactly this ratio; the lateral view scales the heart's depth by it.
    """
    return spec.ctr


# ---------------------------------------------------------------------------------------------
# Anatomy: attenuation images in [0, 1], bright = dense (MONOCHROME2 display semantics)


@dataclass(frozen=True)
class ThoraxLayout:
    """Frontal-view geometry in pixels, shared by the drawing and by tests that measure it."""

    midline_x: float
    thorax_half_width: float  # inner rib margin at the widest row: lung_offset + lung_half_width
    lung_offset: float  # lung centre's distance from the midline
    lung_half_width: float
    lung_center_y: float
    lung_half_height: float
    diaphragm_y: tuple[float, float]  # lowest lung row: (patient right = image left, patient left)
    heart_center_x: float
    heart_center_y: float
    heart_half_width: float
    heart_half_height: float


def frontal_layout(spec: ChestSpec) -> ThoraxLayout:
    height, width = spec.rows, spec.columns
    rng = np.random.default_rng([SEED, 2, spec.index])
    midline = width * (0.5 + float(rng.uniform(-0.01, 0.01)))
    lung_half_width = width * float(rng.uniform(0.140, 0.150))
    lung_offset = width * 0.215
    thorax_half = lung_offset + lung_half_width
    # A supine AP film is taken at shallower inspiration: domes sit higher.
    right_dome = height * (float(rng.uniform(0.745, 0.765)) - (0.035 if spec.view == "AP" else 0.0))
    left_dome = right_dome + height * 0.02  # the liver pushes the right hemidiaphragm up
    heart_half_width = spec.ctr * thorax_half
    return ThoraxLayout(
        midline_x=midline, thorax_half_width=thorax_half, lung_offset=lung_offset,
        lung_half_width=lung_half_width, lung_center_y=height * 0.50, lung_half_height=height * 0.40,
        diaphragm_y=(right_dome, left_dome),
        # One third of the heart lies right of the midline, two thirds left (image right).
        heart_center_x=midline + heart_half_width / 3, heart_center_y=left_dome - height * 0.12,
        heart_half_width=heart_half_width,
        heart_half_height=height * 0.16 * math.sqrt(spec.ctr / 0.45),
    )


def _inside(signed_distance, edge: float):
    """Soft inside-mask from a signed distance (negative inside): linear ramp, no transcendentals,
    so the result does not depend on the CPU's vectorised exp/sin implementation."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0)


def _ellipse(x, y, cx: float, cy: float, ax: float, ay: float, edge: float):
    radius = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return _inside((radius - 1.0) * min(ax, ay), edge)


def _torso(x, y, cx: float, cy: float, ax: float, ay: float, edge: float):
    """Soft-tissue outline: a squarish superellipse (power 4), so the shoulders fill the corners
    the way a real torso fills the detector; density falls off towards the flanks, where the
    body is thinner."""
    dx, dy = (x - cx) / ax, (y - cy) / ay
    radius = np.sqrt(np.sqrt(dx**4 + dy**4))
    return _inside((radius - 1.0) * min(ax, ay), edge) * (1.0 - 0.25 * np.minimum(dx**2, 1.0))


def _band(offset, half_thickness: float, edge: float):
    return _inside(np.abs(offset) - half_thickness, edge)


def _grid(spec: ChestSpec):
    return (np.arange(spec.columns, dtype=np.float32)[None, :],
            np.arange(spec.rows, dtype=np.float32)[:, None])


def _frontal_lungs(x, y, layout: ThoraxLayout, spec: ChestSpec, edge: float):
    """Aerated lung (0..1) per pixel: two ellipses cut by the diaphragm domes, minus any fluid."""
    height = spec.rows
    air = np.zeros((spec.rows, spec.columns), np.float32)
    for image_side, patient_side, dome_y in ((-1, "right", layout.diaphragm_y[0]),
                                             (1, "left", layout.diaphragm_y[1])):
        centre_x = layout.midline_x + image_side * layout.lung_offset
        lung = _ellipse(x, y, centre_x, layout.lung_center_y, layout.lung_half_width,
                        layout.lung_half_height, edge)
        # The dome peaks medial to the lung centre, so the lateral recess (costophrenic angle)
        # is the lowest, sharpest point of the lung.
        dome_peak_x = centre_x - image_side * 0.15 * layout.lung_half_width
        across = (x - dome_peak_x) / (1.15 * layout.lung_half_width)
        dome = dome_y - height * 0.075 * np.clip(1.0 - across**2, 0.0, 1.0)
        lung = lung * _inside(y - dome, edge)
        if patient_side in spec.effusion_sides:
            lung = lung * (1.0 - _effusion(x, y, centre_x, image_side, dome_y, layout, spec))
        air += lung
    return air


def _effusion(x, y, centre_x: float, image_side: int, dome_y: float, layout: ThoraxLayout,
              spec: ChestSpec):
    """Fluid filling the lung base with a meniscus that climbs the lateral chest wall: the
    costophrenic angle is blunted, which is the radiographic sign the label stands for."""
    rng = np.random.default_rng([SEED, 3, spec.index, image_side + 1])
    height = spec.rows
    lateral = np.clip((image_side * (x - centre_x) / layout.lung_half_width + 1.0) / 2.0, 0.0, 1.0)
    top = dome_y - height * float(rng.uniform(0.09, 0.15)) - height * 0.07 * lateral**2
    return _inside(top - y, height * 0.02)  # layering fluid fades in rather than edging sharply


def _ribs(x, y, layout: ThoraxLayout, spec: ChestSpec, edge: float):
    height = spec.rows
    lateral = np.abs(x - layout.midline_x) / layout.thorax_half_width
    over_thorax = _inside(lateral - 1.0, 0.04) * _inside(0.09 - lateral, 0.04)
    top = layout.lung_center_y - layout.lung_half_height
    ribs = np.zeros((spec.rows, spec.columns), np.float32)
    for k in range(10):  # posterior ribs: arch up from the spine, then sweep down laterally
        centre = top + height * (0.045 + 0.062 * k) + height * (0.12 * (lateral - 0.55) ** 2 - 0.03)
        ribs += _band(y - centre, height * (0.008 + 0.0008 * k), edge)
    for k in range(6):  # fainter anterior ribs slope down towards the sternum
        centre = top + height * (0.10 + 0.075 * k) + height * 0.06 * (1.0 - lateral)
        ribs += 0.45 * _band(y - centre, height * 0.009, edge) * _inside(0.25 - lateral, 0.08)
    return ribs * over_thorax


def _hilar_markings(x, y, layout: ThoraxLayout, spec: ChestSpec):
    """Vessels fan out from each hilum, so lung density fades from the hila to the periphery."""
    markings = np.zeros((spec.rows, spec.columns), np.float32)
    for side in (-1, 1):
        hilum_x = layout.midline_x + side * (layout.lung_offset - 0.55 * layout.lung_half_width)
        hilum_y = layout.lung_center_y - 0.05 * spec.rows
        distance = np.sqrt(((x - hilum_x) / layout.lung_half_width) ** 2
                           + ((y - hilum_y) / (0.5 * layout.lung_half_height)) ** 2)
        markings += np.clip(1.0 - 0.7 * distance, 0.0, 1.0) ** 2
    return markings


def _clavicles(x, y, layout: ThoraxLayout, spec: ChestSpec, edge: float):
    height, width = spec.rows, spec.columns
    raise_by = 0.03 if spec.view == "AP" else 0.0  # AP projects the clavicles higher
    along = (np.abs(x - layout.midline_x) - 0.035 * width) / (0.27 * width)
    centre = height * (0.17 - raise_by - 0.05 * along + 0.04 * along * (1.0 - along))
    return _band(y - centre, height * 0.012, edge) * _inside(-along, 0.03) * _inside(along - 1.0, 0.03)


def _spine(x, y, centre_x, half_width: float, spec: ChestSpec, edge: float):
    """Vertebral column: a bright band whose density dips at each disc space."""
    period = spec.rows * 0.045
    phase = (y / period) % 1.0
    disc = _inside(np.abs(phase - 0.5) - 0.40, 0.05)  # 1 near the disc, 0 mid-vertebra
    return _band(x - centre_x, half_width, edge) * (1.0 - 0.2 * disc)


def _draw_frontal(spec: ChestSpec) -> np.ndarray:
    layout = frontal_layout(spec)
    x, y = _grid(spec)
    height, width = spec.rows, spec.columns
    edge = max(1.5, 0.004 * width)
    mid = layout.midline_x

    body = _torso(x, y, mid, height * 0.60, width * 0.47, height * 0.62, edge * 3)
    heart = _ellipse(x, y, layout.heart_center_x, layout.heart_center_y, layout.heart_half_width,
                     layout.heart_half_height, edge)
    mediastinum = _band(x - mid, width * 0.065, edge * 2) * _inside(y - layout.heart_center_y, edge)
    air = _frontal_lungs(x, y, layout, spec, edge) * (1.0 - heart) * (1.0 - mediastinum)
    trachea = _band(x - mid, width * 0.012, edge) * _inside(y - height * 0.33, height * 0.03)

    image = 0.50 * body - 0.34 * air * body - 0.07 * trachea
    image += 0.05 * air * _hilar_markings(x, y, layout, spec)
    image += 0.06 * _spine(x, y, mid, width * 0.03, spec, edge) * body
    # Ribs stand out against aerated lung; over soft tissue scatter washes most of them out.
    image += 0.06 * _ribs(x, y, layout, spec, edge) * body * (0.35 + 0.65 * air)
    image += 0.10 * _clavicles(x, y, layout, spec, edge) * body
    if spec.view == "AP":  # scapulae stay over the lungs when the arms cannot be rotated out
        for side in (-1, 1):
            image += 0.04 * _ellipse(x, y, mid + side * width * 0.33, height * 0.30,
                                     width * 0.07, height * 0.13, edge * 2)
    return image


def _draw_lateral(spec: ChestSpec) -> np.ndarray:
    """Left lateral: anterior to the image left, both lungs superimposed into one oval."""
    x, y = _grid(spec)
    height, width = spec.rows, spec.columns
    edge = max(1.5, 0.004 * width)
    rng = np.random.default_rng([SEED, 2, spec.index])
    base = height * float(rng.uniform(0.77, 0.79))

    body = _torso(x, y, width * 0.50, height * 0.60, width * 0.44, height * 0.62, edge * 3)
    lung = _ellipse(x, y, width * 0.52, height * 0.47, width * 0.31, height * 0.39, edge)
    # Domes peak anteriorly; the posterior costophrenic sulcus is the lowest point.
    across = (x - width * 0.42) / (width * 0.40)
    lung = lung * _inside(y - (base - height * 0.09 * np.clip(1.0 - across**2, 0.0, 1.0)), edge)
    if spec.effusion_sides:  # fluid collects first in the posterior sulcus
        posterior = np.clip((x - width * 0.50) / (width * 0.33), 0.0, 1.0)
        top = base - height * float(rng.uniform(0.07, 0.11)) - height * 0.08 * posterior**2
        lung = lung * (1.0 - _inside(top - y, height * 0.02))
    scale = spec.ctr / 0.45
    heart_half_width = width * 0.15 * scale  # an enlarged heart fills the retrocardiac space
    heart = _ellipse(x, y, width * 0.22 + 0.85 * heart_half_width, base - height * 0.12,
                     heart_half_width, height * 0.15 * math.sqrt(scale), edge)
    air = lung * (1.0 - heart)
    trachea_x = width * (0.45 + 0.05 * y / (height * 0.3))
    trachea = _band(x - trachea_x, width * 0.016, edge) * _inside(y - height * 0.32, height * 0.03)
    from_hilum = np.sqrt(((x - width * 0.55) / (width * 0.2)) ** 2
                         + ((y - height * 0.42) / (height * 0.2)) ** 2)

    image = 0.50 * body - 0.30 * air * body - 0.07 * trachea
    image += 0.05 * air * np.clip(1.0 - 0.7 * from_hilum, 0.0, 1.0) ** 2
    image += 0.10 * _spine(x, y, width * 0.84, width * 0.045, spec, edge) * body
    sternum = _band(x - width * 0.18, width * 0.012, edge) * _band(y - height * 0.36, height * 0.2, edge)
    image += 0.08 * sternum
    behind_hilum = _inside(width * 0.55 - x, edge * 4) * body
    for k in range(7):  # posterior ribs cross the back of the lungs obliquely
        centre = height * (0.16 + 0.085 * k) + 0.35 * (x - width * 0.5)
        image += 0.04 * _band(y - centre, height * 0.01, edge) * behind_hilum
    return image


def _mottle(spec: ChestSpec, rng: np.random.Generator, cells: int = 9) -> np.ndarray:
    """Smooth low-frequency noise: a coarse Gaussian grid, bilinearly upsampled. Written as plain
    element-wise arithmetic (no BLAS) so that the sums are evaluated in a fixed order."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    rows = _linear_resample(coarse, spec.rows, axis=0)
    return _linear_resample(rows, spec.columns, axis=1)


def _linear_resample(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = values.shape[axis]
    position = np.linspace(0.0, n - 1.0, size, dtype=np.float32)
    lower = np.minimum(position.astype(np.int64), n - 2)
    weight = position - lower.astype(np.float32)
    if axis == 0:
        return values[lower] * (1 - weight[:, None]) + values[lower + 1] * weight[:, None]
    return values[:, lower] * (1 - weight[None, :]) + values[:, lower + 1] * weight[None, :]


def draw_chest(spec: ChestSpec) -> np.ndarray:
    """The noisy attenuation image in [0, 1] (float32): high = dense, i.e. bright on display."""
    image = _draw_lateral(spec) if spec.view == "LATERAL" else _draw_frontal(spec)
    rng = np.random.default_rng([SEED, 4, spec.index])
    image += 0.015 * _mottle(spec, rng)
    image += 0.005 * rng.standard_normal(image.shape, dtype=np.float32)  # quantum mottle
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def stored_values(image: np.ndarray, spec: ChestSpec) -> np.ndarray:
    """Display-semantics image → stored pixel values, as the detector would have written them."""
    # MONOCHROME1 means low values display white, so air (dark) is stored high.
    level = 1.0 - image if spec.photometric == "MONOCHROME1" else image
    if spec.signed:
        return np.rint(level * 4000.0 - 2000.0).astype(np.int16)
    full_scale = 2**spec.bits_stored - 1
    stored = np.rint(full_scale * (0.02 + 0.96 * level))  # a margin off both ends, like real plates
    return stored.astype(np.uint8 if spec.bits_stored <= 8 else np.uint16)

