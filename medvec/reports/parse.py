"""Radiology reports beside the images: the three layouts users bring, split into sections,
scrubbed by an explicit PHI policy, with findings read from the text.

Layouts:
- MIMIC-CXR: `files/p10/p10000032/s50414267.txt` beside the study folder `s50414267/` that holds
  the study's images; the report links to every image under a folder of that name.
- Open-I: one XML per report (`AbstractText Label="FINDINGS"` / `"IMPRESSION"` ..., MeSH terms in
  `<MeSH><major>/<minor>`, images in `<parentImage id="CXR1_1_IM-0001-3001">`); links by file stem.
- Indiana CSV pair at the source root: `reports.csv` (uid, findings, impression, indication, MeSH,
  Problems) and `projections.csv` (uid, filename, projection); links by file name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from medvec.datasets.labels import labels_from_findings_text, labels_from_terms

SECTIONS = ("indication", "comparison", "technique", "findings", "impression")
_HEADINGS = {
    "INDICATION": "indication", "HISTORY": "indication", "CLINICAL HISTORY": "indication",
    "REASON FOR EXAM": "indication", "REASON FOR EXAMINATION": "indication", "CLINICAL INFORMATION": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison", "TECHNIQUE": "technique", "EXAMINATION": "technique",
    "EXAM": "technique", "FINDINGS": "findings", "FINDING": "findings", "IMPRESSION": "impression",
    "CONCLUSION": "impression", "SUMMARY": "impression",
}
_HEADING = re.compile(r"^[ \t]*(" + "|".join(sorted(map(re.escape, _HEADINGS), key=len, reverse=True)) + r")[ \t]*:",
                      re.MULTILINE)
_MIMIC_NAME = re.compile(r"^s\d+\.txt$", re.IGNORECASE)
INDIANA_REPORTS = ("reports.csv", "indiana_reports.csv")
INDIANA_PROJECTIONS = ("projections.csv", "indiana_projections.csv")
MAX_REPORT_BYTES = 1 << 20


@dataclass
class ReportRecord:
    """One report, scrubbed, with the keys that link it to its images."""

    report_id: str
    batch: str
    source_uri: str
    layout: str  # mimic | openi | indiana
    study_key: str  # MIMIC study folder (s50414267), Open-I / Indiana uid
    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""
    technique: str = ""
    text: str = ""  # every section, scrubbed: what full-text search indexes
    mesh: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # from the text (medvec.datasets.labels), CheXpert vocabulary
    image_names: list[str] = field(default_factory=list)  # file stems the report names (Open-I, Indiana)
    study_folder: str | None = None  # MIMIC: images under a folder with this name belong to it
    redactions: int = 0

    def to_row(self) -> dict:
        return asdict(self)


REPORT_RECORD_SCHEMA = pa.schema([
    ("report_id", pa.string()), ("batch", pa.string()), ("source_uri", pa.string()), ("layout", pa.string()),
    ("study_key", pa.string()), *[(s, pa.string()) for s in SECTIONS], ("text", pa.string()),
    ("mesh", pa.list_(pa.string())), ("labels", pa.list_(pa.string())), ("image_names", pa.list_(pa.string())),
    ("study_folder", pa.string()), ("redactions", pa.int32()),
])


def report_table_schema(dim: int) -> pa.Schema:
    fields = [pa.field("report_id", pa.string(), nullable=False)]
    fields += [f for f in REPORT_RECORD_SCHEMA if f.name != "report_id"]
    return pa.schema(fields + [pa.field("vector", pa.list_(pa.float32(), dim)), pa.field("model_id", pa.string())])


def is_report_file(uri: str) -> bool:
    """Files the report assets read and the image assets leave alone."""
    name = uri.rsplit("/", 1)[-1]
    return bool(_MIMIC_NAME.match(name)) or name.lower().endswith(".xml")


# --- PHI ---------------------------------------------------------------------------------------------

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_SCRUB_RULES = (
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "[email]"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?\b"), "[date]"),
    (re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"), "[date]"),
    (re.compile(rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.IGNORECASE), "[date]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS},?\s+\d{{4}}\b", re.IGNORECASE), "[date]"),
    (re.compile(r"\b\d{1,2}:\d{2}(?:\s?[ap]\.?m\.?)?(?=\W|$)", re.IGNORECASE), "[time]"),
    (re.compile(r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b"), "[phone]"),
    (re.compile(r"\b(?:pager|beeper|ext\.?|x)\s?\d{4,5}\b", re.IGNORECASE), "[phone]"),
    (re.compile(r"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][A-Za-z'-]+(?:\s+[A-Z][A-Za-z'-]+)?"), "[name]"),
    (re.compile(r"\b((?i:discussed with|communicated to|notified|paged|called|telephoned|reported to|"
                r"d/w)\s+)(?!The\b|A\b|An\b|\[)[A-Z][A-Za-z'-]+(?:\s+[A-Z][A-Za-z'-]+)?"), r"\1[name]"),
    (re.compile(r"\b(?:MRN|accession|acc|medical record)\s*(?:no\.?|number|#)?\s*:?\s*\w*\d\w*", re.IGNORECASE), "[id]"),
    (re.compile(r"\b\d{6,}\b"), "[id]"),
)


def scrub_report_text(text: str) -> tuple[str, int]:
    """Identifiers and dates out of report text; returns the text and how many were replaced.

    Policy (README, "Reports"): dates, times, phone and pager numbers, e-mail addresses, long
    digit runs (record and accession numbers) and names after a title (Dr., Mr., ...) or after
    "discussed with" / "notified" are replaced by a bracketed tag. `___` (the placeholder
    MIMIC-CXR and Open-I already put where identifiers were) is kept. A bare name with no title
    and no such verb is not recognised: the datasets this reads are de-identified at source,
    and this pass is a second line, not a de-identifier.
    """
    count = 0
    for pattern, replacement in _SCRUB_RULES:
        text, n = pattern.subn(replacement, text)
        count += n
    return text, count


# --- parsing -----------------------------------------------------------------------------------------

def split_sections(text: str) -> dict[str, str]:
    """Section text by heading (FINDINGS:, IMPRESSION:, INDICATION:, ...); text before any heading
    that is not a header line goes to findings when the report has no FINDINGS section."""
    sections: dict[str, list[str]] = {}
    matches = list(_HEADING.finditer(text))
    preamble = text[:matches[0].start()] if matches else text
    for match, following in zip(matches, matches[1:] + [None]):
        body = text[match.end():following.start() if following else len(text)]
        sections.setdefault(_HEADINGS[match.group(1).upper()], []).append(_clean(body))
    out = {name: "\n".join(p for p in parts if p) for name, parts in sections.items()}
    leftover = _clean(re.sub(r"FINAL REPORT|WET READ.*", "", preamble))
    if leftover and not out.get("findings"):
        out["findings"] = leftover
    return out


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\s*\n\s*", " ", text)).strip()


def _record(*, batch: str, source_uri: str, layout: str, study_key: str, sections: dict[str, str],
            mesh=(), image_names=(), study_folder=None) -> ReportRecord:
    scrubbed, redactions = {}, 0
    for name in SECTIONS:
        scrubbed[name], n = scrub_report_text(sections.get(name, "") or "")
        redactions += n
    text = "\n".join(f"{name.upper()}: {scrubbed[name]}" for name in SECTIONS if scrubbed[name])
    labels = labels_from_report(scrubbed, list(mesh))
    report_id = hashlib.sha1(f"{layout}\0{source_uri}\0{study_key}".encode()).hexdigest()[:24]
    return ReportRecord(report_id=report_id, batch=batch, source_uri=source_uri, layout=layout, study_key=study_key,
                        text=text, mesh=list(mesh), labels=labels, image_names=list(image_names),
                        study_folder=study_folder, redactions=redactions, **scrubbed)


def labels_from_report(sections: dict[str, str], mesh: list[str] | None = None) -> list[str]:
    """Findings from the impression and findings sections (negation-aware keywords); MeSH terms,
    when the report has them, are the stronger signal and are used instead."""
    if mesh:
        labels, _ = labels_from_terms(";".join(mesh))
        if labels:
            return labels
    text = " ".join(sections.get(s, "") for s in ("findings", "impression"))
    return labels_from_findings_text(text)


def parse_mimic(data: bytes, source_uri: str, batch: str) -> ReportRecord:
    name = source_uri.rsplit("/", 1)[-1]
    study = name.rsplit(".", 1)[0]
    text = data[:MAX_REPORT_BYTES].decode("utf-8", errors="replace")
    return _record(batch=batch, source_uri=source_uri, layout="mimic", study_key=study, sections=split_sections(text),
                   study_folder=study)


def parse_openi(data: bytes, source_uri: str, batch: str) -> ReportRecord:
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError("report XML is larger than 1 MiB")
    root = ET.fromstring(data)
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in _HEADINGS:
            sections[_HEADINGS[label]] = _clean("".join(node.itertext()))
    mesh = [_clean(n.text or "") for tag in ("major", "minor") for n in root.iter(tag) if (n.text or "").strip()]
    images = [n.get("id") for n in root.iter("parentImage") if n.get("id")]
    uid = root.find(".//uId")
    study = (uid.get("id") if uid is not None else None) or source_uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return _record(batch=batch, source_uri=source_uri, layout="openi", study_key=study, sections=sections, mesh=mesh,
                   image_names=images)


def parse_indiana(reports_csv: str, projections_csv: str | None, source_uri: str,
                  batch: str = "") -> list[ReportRecord]:
    """Every report in the Indiana pair; `image_names` from projections.csv's file names."""
    images: dict[str, list[str]] = {}
    if projections_csv:
        for row in csv.DictReader(io.StringIO(projections_csv)):
            uid, filename = (row.get("uid") or "").strip(), (row.get("filename") or "").strip()
            if uid and filename:
                images.setdefault(uid, []).append(file_stem(filename))
    records = []
    for row in csv.DictReader(io.StringIO(reports_csv)):
        uid = (row.get("uid") or "").strip()
        if not uid:
            continue
        sections = {name: (row.get(name) or "").strip() for name in SECTIONS}
        mesh = [t.strip() for t in re.split(r"[;]", row.get("MeSH") or row.get("Problems") or "")
                if t.strip() and t.strip().lower() != "normal"]
        if not mesh and (row.get("Problems") or "").strip().lower() == "normal":
            mesh = ["normal"]
        records.append(_record(batch=batch, source_uri=f"{source_uri}#uid={uid}", layout="indiana", study_key=uid,
                               sections=sections, mesh=mesh, image_names=images.get(uid, [])))
    return records


def parse_report_file(data: bytes, source_uri: str, batch: str) -> ReportRecord:
    return parse_openi(data, source_uri, batch) if source_uri.lower().endswith(".xml") else parse_mimic(data, source_uri, batch)


def file_stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def reports_table(records: list[ReportRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=REPORT_RECORD_SCHEMA)
