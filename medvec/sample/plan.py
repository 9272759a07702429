"""The sample dataset's plan: which synthetic chest images exist, what each shows, how it is encoded,
and which split each subject falls in. Pure: the same count always gives the same plan."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

NO_FINDING = "No Finding"
CARDIOMEGALY = "Cardiomegaly"
PLEURAL_EFFUSION = "Pleural Effusion"


#: One seed for everything random and one namespace for every UID: the dataset must be
#: byte-identical on every run.
SEED = 20240611
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://medvec.invalid/sample-data")


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

