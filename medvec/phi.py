"""Patient-data policy: which DICOM attributes may leave a source file, and keyed pseudonyms.

Only allow-listed attributes are ever read into a record. Direct identifiers (names, birth
dates, addresses, accession numbers, institution and physician names) are never copied; the
PatientID only ever leaves as an HMAC keyed by `MEDVEC_PSEUDONYM_KEY`. A user may allow more
tags explicitly (`allow_tags`); nothing else is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

log = logging.getLogger(__name__)

#: The built-in key keeps demos and tests working offline; real data needs a secret key.
DEV_PSEUDONYM_KEY = "medvec-dev-key-not-secret"

#: DICOM keywords copied into every record (none of them identifies a person).
RECORD_TAGS = (
    "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "ViewPosition",
    "BodyPartExamined", "Rows", "Columns", "PhotometricInterpretation", "BitsStored",
    "PixelSpacing", "ImagerPixelSpacing", "NumberOfFrames",
)

#: Keywords that identify a person or site. Used to scrub library error messages and to refuse
#: `allow_tags` entries unless the user passes them explicitly *and* knowingly (see allow_tags).
IDENTIFYING_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientAddress",
    "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames", "PatientMotherBirthName",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "StudyID", "StationName", "DeviceSerialNumber", "StudyDate", "StudyTime",
    "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate", "IssuerOfPatientID",
    "MilitaryRank", "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments",
)

#: Metadata-CSV columns dropped unless allowed: they name or locate a person.
_IDENTIFYING_COLUMN = re.compile(
    r"(^|[^a-z])(name|birth|dob|address|street|zip|postcode|phone|email|mrn|ssn|accession|"
    r"physician|doctor|institution)([^a-z]|$)",
    re.IGNORECASE,
)


class Pseudonymizer:
    """Keyed HMAC-SHA256 of patient identifiers: stable per key, not reversible without it."""

    def __init__(self, key: str | None, *, warn: bool = True):
        if not key and warn:
            log.warning(
                "MEDVEC_PSEUDONYM_KEY is not set: subject keys use the built-in development key, "
                "which anyone can recompute. Set a secret key before ingesting real patient data."
            )
        key = key or DEV_PSEUDONYM_KEY
        self._key = key.encode()
        self.uses_dev_key = key == DEV_PSEUDONYM_KEY

    def subject_key(self, patient_id: str | None) -> str | None:
        patient_id = (patient_id or "").strip()
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    def __getstate__(self):  # picklable for worker processes; never printed
        return {"_key": self._key, "uses_dev_key": self.uses_dev_key}

    def __repr__(self) -> str:
        return f"Pseudonymizer(dev_key={self.uses_dev_key})"


def is_identifying_column(name: str) -> bool:
    return bool(_IDENTIFYING_COLUMN.search(name.replace("_", " ")))


def scrub(message: str, secrets: list[str]) -> str:
    """Remove known identifying values from a message before it is stored or logged."""
    for value in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        message = message.replace(value, "[redacted]")
    return message
