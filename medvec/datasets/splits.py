"""One set of split names: every dataset's spelling (`valid`, `val`, `validation`, `dev`) becomes one.

Medvec says `validate` (MIMIC-CXR's official name); `--split` on search and eval accepts any known
spelling and rejects an unknown one with the list of known names.
"""

from __future__ import annotations

import argparse

TRAIN, VALIDATE, TEST = "train", "validate", "test"
KNOWN_SPLITS = (TRAIN, VALIDATE, TEST)
_ALIASES = {
    "train": TRAIN, "training": TRAIN, "train_val": TRAIN, "trainval": TRAIN,
    "validate": VALIDATE, "valid": VALIDATE, "val": VALIDATE, "validation": VALIDATE, "dev": VALIDATE,
    "test": TEST, "testing": TEST,
}


def normalize_split(value: str | None) -> str | None:
    """The one name for a dataset's split value; an unknown value is kept (lower-cased) as it is."""
    text = (value or "").strip().lower()
    if not text:
        return None
    return _ALIASES.get(text, text)


def split_argument(value: str) -> str:
    """argparse `type=` for `--split`: the one name, or an error listing the known names."""
    name = normalize_split(value)
    if name not in KNOWN_SPLITS:
        raise argparse.ArgumentTypeError(
            f"unknown split {value!r}; known splits: {', '.join(KNOWN_SPLITS)} "
            f"(also spelled {', '.join(sorted(k for k in _ALIASES if k not in KNOWN_SPLITS))})")
    return name


def eval_split_argument(value: str) -> str:
    """`medvec eval --split`: a known split or `all`."""
    return "all" if value.strip().lower() == "all" else split_argument(value)
