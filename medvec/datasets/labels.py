"""One finding vocabulary (the 14 CheXpert findings plus "No Finding") and the maps into it from the
label shapes chest X-ray datasets ship: NIH ChestX-ray14 names, CheXpert / MIMIC-CXR-JPG columns,
and Open-I style MeSH problem terms or findings text.

Policy for CheXpert's -1 ("uncertain"): such findings are not put in `labels`; they are kept in
the record's `extra["uncertain_labels"]`, and evaluation decides what they mean (by default the
image is left out of that finding's relevance judgement: neither relevant nor irrelevant).
"""

from __future__ import annotations

import re

NO_FINDING = "No Finding"

#: CheXpert's 14 observations, in CheXpert's column order.
FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)

_KEY = {f.lower(): f for f in FINDINGS}

#: Other datasets' names for the same findings (lower case). NIH ChestX-ray14's Emphysema, Fibrosis
#: and Hernia have no CheXpert counterpart and are dropped (listed in UNMAPPED, kept in `extra`).
SYNONYMS = {
    "effusion": "Pleural Effusion", "pleural effusions": "Pleural Effusion", "pleural_effusion": "Pleural Effusion",
    "infiltration": "Lung Opacity", "infiltrate": "Lung Opacity", "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity", "airspace opacity": "Lung Opacity", "pulmonary opacity": "Lung Opacity",
    "mass": "Lung Lesion", "nodule": "Lung Lesion", "pulmonary nodule": "Lung Lesion", "lung mass": "Lung Lesion",
    "lung nodule": "Lung Lesion", "granuloma": "Lung Lesion", "calcified granuloma": "Lung Lesion",
    "pleural thickening": "Pleural Other", "pleural_thickening": "Pleural Other",
    "pulmonary atelectasis": "Atelectasis", "pulmonary edema": "Edema", "pulmonary congestion": "Edema",
    "enlarged cardiac silhouette": "Cardiomegaly", "cardiac enlargement": "Cardiomegaly",
    "widened mediastinum": "Enlarged Cardiomediastinum", "mediastinal widening": "Enlarged Cardiomediastinum",
    "rib fracture": "Fracture", "fractures, bone": "Fracture", "fractures": "Fracture",
    "catheters, indwelling": "Support Devices", "medical device": "Support Devices", "tube": "Support Devices",
    "pacemaker": "Support Devices", "implanted medical device": "Support Devices", "support device": "Support Devices",
    "normal": "No Finding", "no finding": "No Finding", "no findings": "No Finding", "none": None,
    "pneumothoraces": "Pneumothorax", "lobar pneumonia": "Pneumonia",
}

UNMAPPED = ("Emphysema", "Fibrosis", "Hernia")

#: Words that, shortly before a finding in free text, negate it ("no pleural effusion").
_NEGATIONS = re.compile(r"\b(no|without|negative for|free of|resolved|absence of|not|clear of)\b[^.;]{0,70}$")


def to_finding(name: str) -> str | None:
    """The vocabulary name for a dataset's label, or None when it has none."""
    key = " ".join(name.strip().lower().replace("_", " ").split())
    if key in _KEY:
        return _KEY[key]
    return SYNONYMS.get(key) or SYNONYMS.get(key.replace(" ", "_"))


def map_labels(names) -> tuple[list[str], list[str]]:
    """(vocabulary findings in vocabulary order, names that did not map)."""
    found, unmapped = set(), []
    for name in names:
        if not name or not name.strip():
            continue
        finding = to_finding(name)
        if finding:
            found.add(finding)
        elif name.strip().lower() not in ("none", "nan"):
            unmapped.append(name.strip())
    if len(found) > 1:
        found.discard(NO_FINDING)  # "No Finding" with a finding is a contradiction: the finding wins
    return [f for f in FINDINGS if f in found], unmapped


def labels_from_terms(text: str) -> tuple[list[str], list[str]]:
    """Open-I MeSH problems ("Cardiomegaly/mild;Pulmonary Atelectasis/base/left") or NIH
    "A|B" strings: split on | ; , and drop "/qualifiers"."""
    return map_labels(split_terms(text))


def split_terms(text: str) -> list[str]:
    """A label cell's terms: split on | ; , with "/qualifiers" dropped, blanks and none / nan left out."""
    terms = (t.split("/")[0].strip() for t in re.split(r"[|;,]", text or ""))
    return [t for t in terms if t and t.lower() not in ("none", "nan")]


def are_chest_findings(terms) -> bool:
    """Whether a label column speaks chest findings: at least half of its distinct terms map into the
    vocabulary (NIH's 15 names do, with Emphysema, Fibrosis and Hernia left over); a dermatology or
    fundus set's own conditions do not, and are kept as the dataset spells them."""
    distinct = {" ".join(t.lower().split()) for t in terms}
    return bool(distinct) and 2 * sum(1 for t in distinct if to_finding(t)) >= len(distinct)


#: Names to look for in report text, longest first so "pleural effusion" wins over "effusion".
_TEXT_NAMES = sorted({*_KEY, *(k for k, v in SYNONYMS.items() if v)}, key=len, reverse=True)


def labels_from_findings_text(text: str) -> list[str]:
    """Findings named in free report text, skipping negated mentions ("no pneumothorax").

    A deliberately simple keyword rule (the report issue brings a fuller extractor)."""
    lowered = (text or "").lower()
    found = set()
    for name in _TEXT_NAMES:
        for match in re.finditer(rf"\b{re.escape(name)}\b", lowered):
            if not _NEGATIONS.search(lowered[max(0, match.start() - 90):match.start()]):
                finding = to_finding(name)
                if finding and finding != NO_FINDING:
                    found.add(finding)
    return [f for f in FINDINGS if f in found] or ([NO_FINDING] if lowered.strip() else [])


def chexpert_columns(headers) -> dict[str, str]:
    """Header → finding for CheXpert / MIMIC-CXR-JPG style one-column-per-finding CSVs."""
    return {h: _KEY[h.strip().lower()] for h in headers if h and h.strip().lower() in _KEY}


def chexpert_row(row: dict, columns: dict[str, str]) -> tuple[list[str], list[str]]:
    """(positive findings, uncertain findings) from 1 / 0 / -1 / blank cells."""
    positive, uncertain = [], []
    for header, finding in columns.items():
        value = (row.get(header) or "").strip()
        try:
            number = float(value) if value else None
        except ValueError:
            number = None
        if number == 1:
            positive.append(finding)
        elif number == -1:
            uncertain.append(finding)
    positive, _ = map_labels(positive)
    return positive, [f for f in FINDINGS if f in set(uncertain)]


def label_agreement_of(pairs: list[tuple[set[str], set[str]]]) -> dict:
    """How read labels agree with given ones over (given, read) pairs, one per image: per finding the
    precision and recall of the read labels, and the share of images whose two sets are equal."""
    if not pairs:
        return {"images": 0}
    per_finding = {}
    for finding in sorted({f for given, read in pairs for f in given | read}):
        tp = sum(1 for g, r in pairs if finding in g and finding in r)
        fp = sum(1 for g, r in pairs if finding in r and finding not in g)
        fn = sum(1 for g, r in pairs if finding in g and finding not in r)
        per_finding[finding] = {"given": tp + fn, "read": tp + fp,
                                "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                                "recall": round(tp / (tp + fn), 4) if tp + fn else None}
    return {"images": len(pairs), "exact_match": round(sum(g == r for g, r in pairs) / len(pairs), 4),
            "per_finding": per_finding}
