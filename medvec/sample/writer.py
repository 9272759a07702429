"""Writes Medvec's offline demo dataset: two NEMA WG04 radiographs, synthetic chest X-ray DICOMs
whose findings are known by construction, a labels.csv, and a few broken files for error records.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    UID,
    RLELossless,
)

log = logging.getLogger(__name__)

NO_FINDING = "No Finding"
CARDIOMEGALY = "Cardiomegaly"
PLEURAL_EFFUSION = "Pleural Effusion"

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

#: One seed for everything random and one namespace for every UID: the dataset must be
#: byte-identical on every run.
SEED = 20240611
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://medvec.invalid/sample-data")

#: NEMA WG04 reference radiographs shipped by pydicom-data: (file name, labels, view).
WG04_FILES = (
    ("RG1_UNCR.dcm", NO_FINDING, "PA"),  # chest PA, MONOCHROME1, 15-bit
    ("RG3_UNCR.dcm", "", ""),  # knee: not a chest, so no chest finding and no chest view
)

PA_LATERAL, PORTABLE_AP, PA_ONLY = ("PA", "LATERAL"), ("AP",), ("PA",)
RIGHT, LEFT, BOTH = ("right",), ("left",), ("right", "left")


@dataclass(frozen=True)
class PatientPlan:
    """One synthetic subject: outpatients get PA + lateral studies, inpatients a portable AP."""

    studies: tuple[tuple[str, ...], ...]  # views per study, in study order
    cardiomegaly: bool  # heart size belongs to the patient, so it holds across all images
    effusions: tuple[tuple[str, ...], ...]  # effusion sides per study: effusions come and go


#: Twelve subjects (cycled for larger counts) with 1-4 images each: 36 images that split into
#: 10 No Finding, 12 Cardiomegaly, 10 Pleural Effusion and 4 with both; the first four patients
#: alone (12 images) still hold every finding in a frontal view.
PATIENT_PLANS = (
    PatientPlan((PA_LATERAL, PORTABLE_AP), False, ((), RIGHT)),
    PatientPlan((PA_LATERAL,), True, ((),)),
    PatientPlan((PORTABLE_AP, PA_LATERAL, PORTABLE_AP), True, (BOTH, (), ())),
    PatientPlan((PA_LATERAL, PA_ONLY), False, (LEFT, ())),
    PatientPlan((PA_LATERAL, PORTABLE_AP), False, ((), ())),
    PatientPlan((PA_LATERAL,), False, ((),)),
    PatientPlan((PORTABLE_AP, PA_LATERAL, PORTABLE_AP), False, (RIGHT, (), RIGHT)),
    PatientPlan((PA_LATERAL, PA_ONLY), True, ((), LEFT)),
    PatientPlan((PA_LATERAL, PORTABLE_AP), True, ((), BOTH)),
    PatientPlan((PA_LATERAL,), False, (LEFT,)),
    PatientPlan((PORTABLE_AP, PA_LATERAL, PORTABLE_AP), True, ((), (), RIGHT)),
    PatientPlan((PA_LATERAL, PA_ONLY), False, (RIGHT, RIGHT)),
)

# Encodings are cycled per image with co-prime-ish periods so that even a 12-image set mixes
# every transfer syntax, bit depth, photometric interpretation and VOI style.
TRANSFER_SYNTAX_CYCLE = (
    ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless,
    JPEGLSLossless, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
)
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
BITS_STORED_CYCLE = (12, 10, 8, 15, 12, 16, 10)
SIZE_CYCLE = ((640, 560), (512, 512), (768, 640), (600, 512), (704, 704), (512, 448), (720, 608))
LARGE_SIZE = (1024, 896)
WINDOW_CYCLE = ("single", "none", "multi")
SIGNED_INDICES = (4, 23)  # int16 with RescaleIntercept -1024, as some CR exports do
RESCALED_INDEX = 7  # the one unsigned image with a non-identity modality LUT

LABELS_CSV_HEADER = ("path", "finding_labels", "view_position", "split", "patient_id")
REPORT_LAYOUTS = ("indiana", "openi", "mimic")
SPLIT_FRACTIONS = (("test", 0.15), ("valid", 0.15))  # the rest is train


@dataclass(frozen=True)
class ChestSpec:
    """Everything that decides one synthetic image: anatomy, findings and how it is encoded."""

    index: int
    patient: int  # 1-based, as in the fake PatientID
    study: int  # 0-based within the patient
    view: str  # PA | AP | LATERAL
    cardiomegaly: bool
    effusion_sides: tuple[str, ...]  # patient sides: "right", "left"
    ctr: float  # ground-truth cardiothoracic ratio the heart is drawn with
    rows: int
    columns: int
    modality: str  # CR | DX
    photometric: str  # MONOCHROME1 | MONOCHROME2
    bits_stored: int
    signed: bool
    rescale: tuple[float, float] | None  # (slope, intercept)
    window: str  # single | multi | none
    transfer_syntax: str

    @property
    def labels(self) -> list[str]:
        found = [CARDIOMEGALY] if self.cardiomegaly else []
        found += [PLEURAL_EFFUSION] if self.effusion_sides else []
        return found or [NO_FINDING]

    @property
    def patient_id(self) -> str:
        return f"SYN-{self.patient:04d}"

    @property
    def report_layout(self) -> str:
        """Which of the three report layouts this image's study is written in (a third each)."""
        return REPORT_LAYOUTS[(self.patient + self.study) % 3]

    @property
    def study_folder(self) -> str:
        """MIMIC-CXR style study folder name."""
        return f"s{50_000_000 + self.patient * 10 + self.study}"

    @property
    def relative_path(self) -> str:
        if self.report_layout == "mimic":  # files/p10/p<subject>/s<study>/ as MIMIC-CXR lays images out
            return f"synthetic/files/p10/p{10_000_000 + self.patient}/{self.study_folder}/chest_{self.index:03d}.dcm"
        return f"synthetic/chest_{self.index:03d}.dcm"


@dataclass
class SampleDataSummary:
    """What write_sample_data wrote. `by_label` counts labelled images per finding label
    (an image with two findings counts once for each)."""

    out_dir: Path
    files: list[Path]
    labels_csv: Path
    by_label: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Plan: which images exist and what they show


def chest_specs(count: int = 36) -> list[ChestSpec]:
    """The synthetic images to generate, in file order. Pure: the same count gives the same plan."""
    specs: list[ChestSpec] = []
    patient = 0
    while len(specs) < count:
        plan = PATIENT_PLANS[patient % len(PATIENT_PLANS)]
        rng = np.random.default_rng([SEED, 1, patient])
        base_ctr = rng.uniform(0.585, 0.655) if plan.cardiomegaly else rng.uniform(0.425, 0.475)
        for study, (views, effusion) in enumerate(zip(plan.studies, plan.effusions)):
            for view in views:
                if len(specs) == count:
                    break
                # Small per-image wobble: the same heart measures slightly differently each time.
                ctr = round(float(base_ctr + rng.uniform(-0.004, 0.004)), 4)
                specs.append(_encoding_for(len(specs), patient + 1, study, view, plan.cardiomegaly,
                                           effusion, ctr))
        patient += 1
    return specs


def _encoding_for(index: int, patient: int, study: int, view: str, cardiomegaly: bool,
                  effusion: tuple[str, ...], ctr: float) -> ChestSpec:
    rows, columns = LARGE_SIZE if index % 11 == 6 else SIZE_CYCLE[index % len(SIZE_CYCLE)]
    signed = index in SIGNED_INDICES
    rescale = (1.0, -1024.0) if signed else (0.5, 100.0) if index == RESCALED_INDEX else None
    # DX requires an identity modality LUT, so images with a real rescale must be CR.
    modality = "CR" if rescale or index % 2 == 0 else "DX"
    return ChestSpec(
        index=index, patient=patient, study=study, view=view, cardiomegaly=cardiomegaly,
        effusion_sides=effusion, ctr=ctr, rows=rows, columns=columns, modality=modality,
        photometric="MONOCHROME1" if index % 4 == 1 else "MONOCHROME2",
        bits_stored=16 if signed else BITS_STORED_CYCLE[index % len(BITS_STORED_CYCLE)],
        signed=signed, rescale=rescale, window=WINDOW_CYCLE[index % len(WINDOW_CYCLE)],
        transfer_syntax=TRANSFER_SYNTAX_CYCLE[index % len(TRANSFER_SYNTAX_CYCLE)],
    )


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


# ---------------------------------------------------------------------------------------------
# Encoding: stored values, DICOM header, transfer syntax


def stored_values(image: np.ndarray, spec: ChestSpec) -> np.ndarray:
    """Display-semantics image → stored pixel values, as the detector would have written them."""
    # MONOCHROME1 means low values display white, so air (dark) is stored high.
    level = 1.0 - image if spec.photometric == "MONOCHROME1" else image
    if spec.signed:
        return np.rint(level * 4000.0 - 2000.0).astype(np.int16)
    full_scale = 2**spec.bits_stored - 1
    stored = np.rint(full_scale * (0.02 + 0.96 * level))  # a margin off both ends, like real plates
    return stored.astype(np.uint8 if spec.bits_stored <= 8 else np.uint16)


def _uid(*parts: object) -> str:
    """A fixed 2.25 UID per name. pydicom's generate_uid ignores `entropy_srcs` when prefix is
    None (it returns a random UUID), so the name-based UUID is built here instead."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _voi_window(stored: np.ndarray, spec: ChestSpec) -> tuple[int, int]:
    """(centre, width) in modality output units covering the 1st–99th percentile."""
    slope, intercept = spec.rescale or (1.0, 0.0)
    low, high = np.percentile(stored, [1.0, 99.0]) * slope + intercept
    return int(round((low + high) / 2)), int(round(high - low)) + 1


def chest_dataset(spec: ChestSpec, stored: np.ndarray) -> Dataset:
    """A complete CR/DX instance (file meta included) holding `stored` uncompressed."""
    study_date = date(2023, 1, 9) + timedelta(days=41 * spec.patient + 97 * spec.study)
    sop_class = CR_IMAGE_STORAGE if spec.modality == "CR" else DX_IMAGE_STORAGE_FOR_PRESENTATION
    sop_instance = _uid("sop", spec.index)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + spec.patient % 9:02d}{(13 * spec.study + 5) % 60:02d}00"
    ds.ContentTime = f"{8 + spec.patient % 9:02d}{(13 * spec.study + 7) % 60:02d}{spec.index % 60:02d}"
    ds.AccessionNumber = f"SYNACC{spec.patient:04d}{spec.study + 1:02d}"
    ds.Modality = spec.modality
    ds.Manufacturer = "Medvec"
    ds.ManufacturerModelName = "Synthetic Chest Phantom"
    ds.SoftwareVersions = "medvec.sample.writer 1"
    # Fake identifying values, present so that de-identification has something to remove.
    ds.InstitutionName = "Medvec Synthetic Hospital"
    ds.InstitutionAddress = "1 Synthetic Way, Nowhere"
    ds.ReferringPhysicianName = f"SYNTHETIC^REFERRER{spec.patient % 3 + 1:02d}"
    ds.OperatorsName = "SYNTHETIC^RADIOGRAPHER"
    ds.StationName = f"SYN{spec.modality}01"
    ds.StudyDescription = "XR CHEST PORTABLE" if spec.view == "AP" else "XR CHEST"
    ds.SeriesDescription = f"CHEST {spec.view}"
    ds.PatientName = f"SYNTHETIC^PATIENT{spec.patient:02d}"
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = "MEDVEC-SYNTHETIC"
    birth_year = 1940 + (spec.patient * 7) % 50
    ds.PatientBirthDate = f"{birth_year}0101"
    ds.PatientSex = "F" if spec.patient % 2 else "M"
    ds.PatientAge = f"{study_date.year - birth_year:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.PatientOrientation = {"PA": ["L", "F"], "AP": ["L", "F"], "LATERAL": ["A", "F"]}[spec.view]
    ds.KVP = "110" if spec.view == "LATERAL" else "120"
    ds.DistanceSourceToDetector = "1000" if spec.view == "AP" else "1800"
    ds.StudyInstanceUID = _uid("study", spec.patient, spec.study)
    ds.SeriesInstanceUID = _uid("series", spec.index)
    ds.StudyID = f"{spec.patient}{spec.study + 1:02d}"
    ds.SeriesNumber = spec.index + 1
    ds.InstanceNumber = 1
    spacing = f"{430.0 / spec.columns:.4f}"  # a 43 cm detector
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # -1: dense anatomy (less beam reaching the detector) is stored high, as MONOCHROME2 is.
        ds.PixelIntensityRelationshipSign = 1 if spec.photometric == "MONOCHROME1" else -1
    if spec.rescale is not None or spec.modality == "DX":
        slope, intercept = spec.rescale or (1.0, 0.0)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    if spec.window != "none":
        centre, width = _voi_window(stored, spec)
        if spec.window == "single":
            ds.WindowCenter, ds.WindowWidth = centre, width
        else:  # the first pair is the right one; the second a wider, flatter alternative
            ds.WindowCenter, ds.WindowWidth = [centre, centre], [width, 2 * width]
            ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]

    ds.set_pixel_data(stored, spec.photometric, spec.bits_stored, generate_instance_uid=False)
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> str:
    """Put `ds` into `transfer_syntax`; falls back to Explicit VR LE if no encoder is installed."""
    if transfer_syntax in NATIVE_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = transfer_syntax  # save_as encodes these itself
        return transfer_syntax
    try:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    except Exception as exc:  # a missing or broken plugin must not stop the demo data
        log.debug("no encoder for %s (%s); writing Explicit VR Little Endian", UID(transfer_syntax).name, exc)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ExplicitVRLittleEndian
    return transfer_syntax


def write_chest(spec: ChestSpec, path: Path) -> str:
    """Draw, encode and save one synthetic image; returns the transfer syntax actually used."""
    ds = chest_dataset(spec, stored_values(draw_chest(spec), spec))
    used = encode(ds, spec.transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return used


# ---------------------------------------------------------------------------------------------
# The dataset on disk


def assign_splits(patient_ids: list[str]) -> dict[str, str]:
    """Split by patient (~70/15/15) so no subject's images land in two splits."""
    order = [patient_ids[i] for i in np.random.default_rng([SEED, 5]).permutation(len(patient_ids))]
    splits: dict[str, str] = {}
    start = 0
    for split, fraction in SPLIT_FRACTIONS:
        size = max(1, round(fraction * len(order))) if len(order) >= 3 else 0
        splits.update({p: split for p in order[start:start + size]})
        start += size
    splits.update({p: "train" for p in order[start:]})
    return splits


def _wg04_sources() -> list[tuple[str, Path, str, str]]:
    try:
        from pydicom.data import get_testdata_file

        # download=False: this dataset must build offline, never fetching from the internet.
        found = [(name, get_testdata_file(name, download=False), labels, view)
                 for name, labels, view in WG04_FILES]
    except Exception as exc:
        log.warning("pydicom test data unavailable (%s); skipping the WG04 images", exc)
        return []
    missing = [name for name, path, _, _ in found if not path]
    if missing:
        log.warning("pydicom-data is not installed (missing %s); skipping the WG04 images. "
                    "Install it with `pip install pydicom-data`.", ", ".join(missing))
        return []
    return [(name, Path(path), labels, view) for name, path, labels, view in found]


def _wg04_patient_id(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))


def _write_broken(out_dir: Path, spec: ChestSpec) -> list[Path]:
    """A DICOM cut off mid-pixel-data (an interrupted transfer) and a text file posing as data."""
    broken = out_dir / "broken"
    truncated = broken / "truncated_chest.dcm"
    write_chest(spec, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    notes = broken / "notes.txt"
    notes.write_text("Scan notes for the demo: this is a text file, not an image.\n"
                     "Medvec should record it as an unreadable file and carry on.\n", encoding="utf-8")
    return [truncated, notes]


def write_sample_data(out_dir: str | Path, *, count: int = 36, include_broken: bool = True,
                      include_reports: bool = True,
                      progress: Callable[[int, int], None] | None = None) -> SampleDataSummary:
    """Write the demo dataset under `out_dir` (files are overwritten, nothing else is removed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wg04 = _wg04_sources()
    specs = chest_specs(count)
    total = len(wg04) + len(specs) + (2 if include_broken else 0) + (len(_studies(specs)) if include_reports else 0)
    files: list[Path] = []
    rows: list[dict[str, str]] = []

    def done(path: Path) -> None:
        files.append(path)
        if progress is not None:
            progress(len(files), total)

    for name, source, labels, view in wg04:
        target = out_dir / "wg04" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        rows.append({"path": f"wg04/{name}", "finding_labels": labels, "view_position": view,
                     "patient_id": _wg04_patient_id(source)})
        done(target)

    used_syntaxes: Counter[str] = Counter()
    for spec in specs:
        path = out_dir / spec.relative_path
        used_syntaxes[write_chest(spec, path)] += 1
        rows.append({"path": spec.relative_path, "finding_labels": "|".join(spec.labels),
                     "view_position": spec.view, "patient_id": spec.patient_id})
        done(path)

    if include_reports:
        for path in write_sample_reports(out_dir, specs):
            done(path)

    if include_broken:
        # The next unused index gives the truncated file its own UIDs, so it is never mistaken
        # for a good image; uncompressed, so the cut lands in the middle of the pixel data.
        broken_spec = replace(chest_specs(1)[0], index=count, transfer_syntax=ExplicitVRLittleEndian)
        for path in _write_broken(out_dir, broken_spec):
            done(path)

    splits = assign_splits(list(dict.fromkeys(row["patient_id"] for row in rows)))
    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABELS_CSV_HEADER, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "split": splits[row["patient_id"]]})

    by_label = Counter(label for row in rows for label in row["finding_labels"].split("|") if label)
    log.info("sample data: %d files in %s; labels %s; transfer syntaxes %s", len(files), out_dir,
             dict(sorted(by_label.items())), {UID(uid).name: n for uid, n in sorted(used_syntaxes.items())})
    return SampleDataSummary(out_dir=out_dir, files=files, labels_csv=labels_csv,
                             by_label=dict(sorted(by_label.items())))


# ---------------------------------------------------------------------------------------------
# Reports: one per study, worded from the study's findings, in the three layouts users bring

def _studies(specs: list[ChestSpec]) -> dict[tuple[int, int], list[ChestSpec]]:
    studies: dict[tuple[int, int], list[ChestSpec]] = {}
    for spec in specs:
        studies.setdefault((spec.patient, spec.study), []).append(spec)
    return studies


def report_sections(spec: ChestSpec) -> dict[str, str]:
    """Findings and impression that say what the synthetic image shows (and nothing else). One
    study in four carries identifiers a real report might, for the PHI scrubber to remove."""
    sides = " and ".join(spec.effusion_sides)
    effusion = ("bilateral pleural effusions" if len(spec.effusion_sides) == 2 else
                f"small {sides} pleural effusion") if spec.effusion_sides else ""
    findings = []
    findings.append("The heart is enlarged." if spec.cardiomegaly else "Heart size is normal.")
    if len(spec.effusion_sides) == 2:
        findings.append("There are bilateral pleural effusions with blunting of the costophrenic angles.")
    else:
        findings.append(f"There is a {effusion} with blunting of the costophrenic angle." if effusion
                        else "No pleural effusion.")
    findings.append("No focal consolidation or pneumothorax.")
    impression = "; ".join(filter(None, ["Cardiomegaly" if spec.cardiomegaly else "",
                                         effusion.capitalize() if effusion else ""]))
    sections = {"indication": "___-year-old with shortness of breath.",
                "comparison": "None.",
                "findings": " ".join(findings),
                "impression": (impression + ".") if impression else "No acute cardiopulmonary process."}
    if spec.patient % 4 == 0:
        sections["impression"] += " Findings discussed with Dr. Quentin Sentinelle at 10:45 on 03/14/2021."
    return sections


def write_sample_reports(out_dir: Path, specs: list[ChestSpec]) -> list[Path]:
    """A report per study: MIMIC-CXR `.txt` beside the study folder, Open-I XML, or a row of the
    Indiana `indiana_reports.csv` / `indiana_projections.csv` pair, by the study's layout."""
    written: list[Path] = []
    indiana_rows, projection_rows = [], []
    for (patient, study), views in _studies(specs).items():
        spec = views[0]
        sections = report_sections(spec)
        if spec.report_layout == "mimic":
            folder = (out_dir / spec.relative_path).parent
            path = folder.parent / f"{spec.study_folder}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("                                 FINAL REPORT\n"
                            f" EXAMINATION:  CHEST ({'PA AND LAT' if len(views) > 1 else views[0].view})\n\n"
                            + "".join(f" {name.upper()}:  {text}\n\n" for name, text in sections.items()),
                            encoding="utf-8")
            written.append(path)
        elif spec.report_layout == "openi":
            uid = f"CXR{patient}_{study}"
            path = out_dir / "reports" / "openi" / f"{uid}.xml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_openi_xml(uid, sections, views), encoding="utf-8")
            written.append(path)
        else:
            uid = f"IU{patient}_{study}"
            indiana_rows.append({"uid": uid, "MeSH": _mesh(spec), "Problems": _mesh(spec) or "normal",
                                 "image": "Xray Chest PA and Lateral", **sections})
            projection_rows += [{"uid": uid, "filename": Path(v.relative_path).name,
                                 "projection": "Lateral" if v.view == "LATERAL" else "Frontal"} for v in views]
    if indiana_rows:
        for name, rows, header in (
                ("indiana_reports.csv", indiana_rows,
                 ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")),
                ("indiana_projections.csv", projection_rows, ("uid", "filename", "projection"))):
            path = out_dir / name
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
            written.append(path)
    return written


def _mesh(spec: ChestSpec) -> str:
    terms = (["Cardiomegaly"] if spec.cardiomegaly else []) + (["Pleural Effusion"] if spec.effusion_sides else [])
    return ";".join(terms)


def _openi_xml(uid: str, sections: dict[str, str], views: list[ChestSpec]) -> str:
    from xml.sax.saxutils import escape

    texts = "".join(f'<AbstractText Label="{name.upper()}">{escape(text)}</AbstractText>'
                    for name, text in sections.items())
    mesh = "".join(f"<major>{escape(term)}</major>" for term in (_mesh(views[0]).split(";") if _mesh(views[0]) else ["normal"]))
    images = "".join(f'<parentImage id="chest_{v.index:03d}"><caption>{v.view}</caption></parentImage>' for v in views)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="{uid}"/>'
            f"<MedlineCitation><Article><Abstract>{texts}</Abstract></Article></MedlineCitation>"
            f"<MeSH>{mesh}</MeSH>{images}</eCitation>\n")
