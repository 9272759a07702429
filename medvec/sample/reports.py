"""The sample's reports: one per study, worded from the study's findings, in the three layouts users bring
(MIMIC-CXR text files, Open-I XML, the Indiana CSV pair)."""

from __future__ import annotations

import csv
from pathlib import Path

from medvec.sample.plan import ChestSpec


def studies_of(specs: list[ChestSpec]) -> dict[tuple[int, int], list[ChestSpec]]:
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
    for (patient, study), views in studies_of(specs).items():
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
