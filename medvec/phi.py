"""Patient-data policy: which DICOM attributes may leave a source file, and keyed pseudonyms.

Only allow-listed attributes are ever read into a record. Direct identifiers (names, birth
dates, addresses, accession numbers, institution and physician names) are never copied; the
PatientID only ever leaves as an HMAC keyed by `MEDVEC_PSEUDONYM_KEY`; Study/Series/SOP Instance
UIDs leave as keyed `2.25.` UIDs (DICOM PS3.15 Annex E, basic profile: "U", replace with a
consistent UID); dates are removed or shifted per subject by a keyed offset. A user may allow more
tags explicitly (`allow_tags`); nothing else is stored. docs/privacy.md has the table.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from datetime import date, timedelta

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


#: How to make a key, quoted by every message that asks for one.
MAKE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'

#: Shifted dates move back by 1..SHIFT_DAYS days (per subject, keyed): far enough that a shifted date
#: does not point at the real day, and every date of one subject moves by the same offset.
SHIFT_DAYS = 3650


class MissingPseudonymKey(ValueError):
    """Real data was about to be ingested with the public development key."""

    def __init__(self):
        super().__init__(
            "MEDVEC_PSEUDONYM_KEY is not set, and the built-in development key would let anyone turn subject "
            f"keys back into patient IDs. Make a secret key with `{MAKE_KEY}`, export it as "
            "MEDVEC_PSEUDONYM_KEY (the same key on every machine that shares this collection), and run again. "
            "Only `medvec demo` and the tests may use the development key (MEDVEC_ALLOW_DEV_KEY=1).")


def require_pseudonym_key(key: str | None, allow_dev_key: bool) -> None:
    """Raise MissingPseudonymKey unless a key is set or the development key is explicitly allowed."""
    if not key and not allow_dev_key:
        raise MissingPseudonymKey()


class Pseudonymizer:
    """Keyed HMAC-SHA256 of patient identifiers and UIDs: stable per key, not reversible without it.

    Without a key it refuses (MissingPseudonymKey) unless `allow_dev_key` says this is a demo or a test.
    """

    def __init__(self, key: str | None, *, warn: bool = True, allow_dev_key: bool = False):
        require_pseudonym_key(key, allow_dev_key)
        if not key and warn:
            log.warning(
                "MEDVEC_PSEUDONYM_KEY is not set: subject keys use the built-in development key, "
                "which anyone can recompute. Set a secret key before ingesting real patient data."
            )
        key = key or DEV_PSEUDONYM_KEY
        self._key = key.encode()
        self.uses_dev_key = key == DEV_PSEUDONYM_KEY

    def _mac(self, purpose: str, value: str) -> bytes:
        # A purpose prefix keeps the three uses apart: a subject key never equals a UID's digest.
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def subject_key(self, patient_id: str | None) -> str | None:
        """128 bits of HMAC-SHA256(key, PatientID) as hex. Without the key, guessing a PatientID back
        means forging the HMAC; with the (public) development key it is one hash per guess."""
        patient_id = (patient_id or "").strip()
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    def uid(self, original: str | None) -> str | None:
        """A keyed replacement UID under `2.25.` (PS3.5 B.2: the decimal of a 128-bit number): the same
        original UID gives the same new UID wherever the key is shared; at most 44 characters, digits and dots."""
        original = (original or "").strip().rstrip("\0")
        if not original:
            return None
        return "2.25." + str(int.from_bytes(self._mac("uid", original)[:16], "big"))

    def date_offset(self, subject: str) -> timedelta:
        """The keyed shift for every date of one subject: -1..-SHIFT_DAYS days, so intervals are kept."""
        return -timedelta(days=1 + int.from_bytes(self._mac("date", subject)[:8], "big") % SHIFT_DAYS)

    def shift_date(self, value: str, subject: str) -> str | None:
        """Shift a DICOM DA (YYYYMMDD) or the date part of a DT; anything unparsable is removed (None)."""
        text = (value or "").strip()
        try:
            day = date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except (ValueError, IndexError):
            return None
        if len(text) > 8 and not text[8:].replace(".", "").replace("+", "").replace("-", "").isdigit():
            return None
        return (day + self.date_offset(subject)).strftime("%Y%m%d") + text[8:]

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
