"""A collection's label vocabulary: its label names, each with the prompts that stand for it in text (the
evaluation's queries, zero-shot's positive and negative prompts), and the common queries answered ahead of time.

`CHEST` is the CheXpert findings as radiologists write them; any other collection (SCIN's dermatology
conditions, a folder of fundus photographs) gets a vocabulary built from the labels its image table holds
(`labels_vocabulary`). `MEDVEC_VOCABULARY` picks one: auto (chest when every label present is a chest
finding, else the labels), chest or labels. Nothing here is global: each table's vocabulary is computed
from that table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

VOCABULARY_CHOICES = ("auto", "chest", "labels")
#: A labels vocabulary keeps the most frequent labels up to this many: each becomes fallback queries and
#: evaluation prompts, and a table whose labels are free text must not turn into thousands of them.
MAX_LABELS = 500
#: How a label outside the chest findings is said: a clinical photograph is the usual non-radiograph image
#: (SCIN's phone photographs); the negative is its negation, as the chest prompts' "no ..." are.
LABEL_PROMPT = "a clinical photograph of {}"
LABEL_NEGATIVE = "a clinical photograph with no {}"


@dataclass(frozen=True)
class Vocabulary:
    """Labels in display order, each with its phrasings (the first is its prompt) and zero-shot negatives."""

    name: str  # "chest" or "labels": what the reports say was used
    prompts: Mapping[str, tuple[str, ...]]
    negatives: Mapping[str, tuple[str, ...]]
    queries: tuple[str, ...]  # the fallback queries: answered ahead of time, without a text encoder

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.prompts)

    def zero_shot_prompts(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """label → (positive prompts, negative prompts)."""
        return {label: (tuple(p), tuple(self.negatives[label])) for label, p in self.prompts.items()}


#: Each finding as radiologists write it; every phrasing is a query and their scores are averaged.
CHEST_PROMPTS = {
    "No Finding": ("no acute cardiopulmonary process", "normal chest x-ray", "no finding"),
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", "widened mediastinum"),
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "mild cardiomegaly"),
    "Lung Opacity": ("lung opacity", "airspace opacity", "patchy opacity"),
    "Lung Lesion": ("lung lesion", "pulmonary nodule", "lung mass"),
    "Edema": ("edema", "pulmonary edema", "pulmonary vascular congestion"),
    "Consolidation": ("consolidation", "lobar consolidation"),
    "Pneumonia": ("pneumonia", "right lower lobe pneumonia"),
    "Atelectasis": ("atelectasis", "bibasilar atelectasis"),
    "Pneumothorax": ("pneumothorax", "small apical pneumothorax"),
    "Pleural Effusion": ("pleural effusion", "small left pleural effusion", "bilateral pleural effusions"),
    "Pleural Other": ("pleural thickening", "pleural other"),
    "Fracture": ("fracture", "rib fracture"),
    "Support Devices": ("support devices", "endotracheal tube", "central venous catheter"),
}

#: The 14 CheXpert findings in their usual report wording, plus normal studies and devices.
CHEST_QUERIES = (
    "atelectasis", "bibasilar atelectasis", "cardiomegaly", "enlarged cardiac silhouette",
    "mild cardiomegaly", "consolidation", "lobar consolidation", "edema", "pulmonary edema",
    "pulmonary vascular congestion", "enlarged cardiomediastinum", "widened mediastinum", "fracture",
    "rib fracture", "lung lesion", "pulmonary nodule", "lung mass", "lung opacity", "airspace opacity",
    "patchy opacity", "pleural effusion", "small left pleural effusion", "bilateral pleural effusions",
    "large right pleural effusion", "pleural thickening", "pleural other", "pneumonia", "right lower lobe pneumonia",
    "pneumothorax", "small apical pneumothorax", "tension pneumothorax", "support devices",
    "endotracheal tube", "nasogastric tube", "central venous catheter", "picc line", "pacemaker",
    "chest tube", "sternotomy wires", "no finding", "normal chest x-ray", "no acute cardiopulmonary process",
    "no acute cardiopulmonary abnormality", "clear lungs", "hyperinflated lungs", "emphysema",
    "hiatal hernia", "interstitial lung disease", "lateral chest x-ray", "frontal chest radiograph",
)


def _chest_negatives(finding: str) -> tuple[str, ...]:
    # "No Finding" has no natural negation: its negatives are the words for an abnormal film.
    if finding == "No Finding":
        return ("abnormal chest x-ray", "acute cardiopulmonary process")
    first = CHEST_PROMPTS[finding][0]
    return (f"no {first}", f"no evidence of {first}")


CHEST = Vocabulary(name="chest", prompts=CHEST_PROMPTS,
                   negatives={f: _chest_negatives(f) for f in CHEST_PROMPTS}, queries=CHEST_QUERIES)


def labels_vocabulary(counts: Mapping[str, int]) -> Vocabulary:
    """The labels present (most frequent first, then by name; at most MAX_LABELS), each said as
    LABEL_PROMPT unless it is a chest finding, which keeps its chest prompts. The fallback queries are
    each label's prompt and its plain name, the words a person types."""
    ordered = sorted((label for label, n in counts.items() if label and n > 0), key=lambda l: (-counts[l], l))
    prompts, negatives = {}, {}
    for label in ordered[:MAX_LABELS]:
        if label in CHEST.prompts:
            prompts[label], negatives[label] = CHEST.prompts[label], CHEST.negatives[label]
        else:
            said = label.lower()
            prompts[label], negatives[label] = (LABEL_PROMPT.format(said),), (LABEL_NEGATIVE.format(said),)
    queries = [text for label, phrasings in prompts.items() for text in (*phrasings, label.lower())]
    return Vocabulary(name="labels", prompts=prompts, negatives=negatives, queries=tuple(dict.fromkeys(queries)))


def choose_vocabulary(counts: Mapping[str, int], setting: str = "auto") -> Vocabulary:
    """The vocabulary for a table holding these label counts under MEDVEC_VOCABULARY's `setting`. auto is
    chest when every label present is a chest finding (or none is present: reports read chest findings)."""
    if setting not in VOCABULARY_CHOICES:
        raise ValueError(f"vocabulary must be one of {', '.join(VOCABULARY_CHOICES)}, not {setting!r}")
    present = {label for label, n in counts.items() if label and n > 0}
    if setting == "chest" or (setting == "auto" and present <= set(CHEST.labels)):
        return CHEST
    return labels_vocabulary(counts)


def label_counts(table) -> Counter:
    """How many rows of a LanceDB image table carry each label (the labels column only is read)."""
    column = table.search().select(["labels"]).limit(None).to_arrow().column("labels").to_pylist()
    return Counter(label for labels in column for label in (labels or []))


def table_vocabulary(table, setting: str = "auto") -> Vocabulary:
    """The vocabulary of one image table (None, no table yet: the chest vocabulary unless told otherwise)."""
    return choose_vocabulary(label_counts(table) if table is not None else Counter(), setting)
