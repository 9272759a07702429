"""One synthetic chest image as a DICOM file: a complete CR/DX header (with fake identifiers for the
de-identification to remove), the pixel data, and the plan's transfer syntax."""

from __future__ import annotations

import logging
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medvec.sample.painter import draw_chest, stored_values
from medvec.sample.plan import NATIVE_SYNTAXES, UID_NAMESPACE, ChestSpec

log = logging.getLogger(__name__)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


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
    _set_study(ds, spec, study_date)
    _set_fake_identifiers(ds, spec, study_date)
    _set_acquisition(ds, spec)
    _set_pixel_meaning(ds, spec, stored)
    ds.set_pixel_data(stored, spec.photometric, spec.bits_stored, generate_instance_uid=False)
    return ds


def _set_study(ds: Dataset, spec: ChestSpec, study_date: date) -> None:
    """Dates, times, accession, descriptions and the study/series UIDs."""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + spec.patient % 9:02d}{(13 * spec.study + 5) % 60:02d}00"
    ds.ContentTime = f"{8 + spec.patient % 9:02d}{(13 * spec.study + 7) % 60:02d}{spec.index % 60:02d}"
    ds.AccessionNumber = f"SYNACC{spec.patient:04d}{spec.study + 1:02d}"
    ds.Modality = spec.modality
    ds.Manufacturer = "Medvec"
    ds.ManufacturerModelName = "Synthetic Chest Phantom"
    ds.SoftwareVersions = "medvec.sample.writer 1"
    ds.StudyDescription = "XR CHEST PORTABLE" if spec.view == "AP" else "XR CHEST"
    ds.SeriesDescription = f"CHEST {spec.view}"
    ds.StudyInstanceUID = _uid("study", spec.patient, spec.study)
    ds.SeriesInstanceUID = _uid("series", spec.index)
    ds.StudyID = f"{spec.patient}{spec.study + 1:02d}"
    ds.SeriesNumber = spec.index + 1
    ds.InstanceNumber = 1


def _set_fake_identifiers(ds: Dataset, spec: ChestSpec, study_date: date) -> None:
    """Fake identifying values, present so that de-identification has something to remove."""
    ds.InstitutionName = "Medvec Synthetic Hospital"
    ds.InstitutionAddress = "1 Synthetic Way, Nowhere"
    ds.ReferringPhysicianName = f"SYNTHETIC^REFERRER{spec.patient % 3 + 1:02d}"
    ds.OperatorsName = "SYNTHETIC^RADIOGRAPHER"
    ds.StationName = f"SYN{spec.modality}01"
    ds.PatientName = f"SYNTHETIC^PATIENT{spec.patient:02d}"
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = "MEDVEC-SYNTHETIC"
    birth_year = 1940 + (spec.patient * 7) % 50
    ds.PatientBirthDate = f"{birth_year}0101"
    ds.PatientSex = "F" if spec.patient % 2 else "M"
    ds.PatientAge = f"{study_date.year - birth_year:03d}Y"


def _set_acquisition(ds: Dataset, spec: ChestSpec) -> None:
    """Body part, view, orientation, exposure and detector geometry."""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.PatientOrientation = {"PA": ["L", "F"], "AP": ["L", "F"], "LATERAL": ["A", "F"]}[spec.view]
    ds.KVP = "110" if spec.view == "LATERAL" else "120"
    ds.DistanceSourceToDetector = "1000" if spec.view == "AP" else "1800"
    spacing = f"{430.0 / spec.columns:.4f}"  # a 43 cm detector
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"


def _set_pixel_meaning(ds: Dataset, spec: ChestSpec, stored: np.ndarray) -> None:
    """How stored values map to display: DX intent and sign, the modality LUT, and the VOI window(s)."""
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


