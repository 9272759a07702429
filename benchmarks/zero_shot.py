"""Zero-shot ROC AUC of one model on a labelled set you point at, beside the model card's published
figures: the check that Medvec's preprocessing reproduces a published number once weights are at hand.

    .venv/bin/python benchmarks/zero_shot.py --source /data/chexpert-test --model medsiglip [--pad-square]
        [--dataset chexpert] [--metadata labels.csv] [--split test] [--limit N] [--bootstrap 1000]
        [--home DIR] [--out benchmarks/results/zero_shot.json]

It ingests `--source` through `medvec ingest` (the same decoding, windowing, resizing and embedding a
user gets) into a fresh Medvec home (or `--home`, reused when it already holds the model's table),
scores every finding zero-shot by prompt ensembles (`medvec.evaluation.zero_shot`: cos(image, positive
prompts) - cos(image, negative prompts)), and prints AUC with a 95% patient-bootstrap interval next to
the published figure.

Published figures (only those in /work/shared/reference/models.md; anything else prints "n/a" and the
card's link, never a guess):
- MedSigLIP (`google/medsiglip-448`): zero-shot AUC on CheXpert test, 13 findings, 518 examples, from the
  model card https://developers.google.com/health-ai-developer-foundations/medsiglip/model-card and the
  MedGemma technical report (arXiv 2507.05201, Table 16). Google's serving code zero-pads images to a
  square before resizing ("method performed in training"): pass `--pad-square` to match it.
- BiomedCLIP (`microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`): its card and paper (arXiv
  2303.00915) publish no per-finding chest X-ray zero-shot AUC: n/a.
- SigLIP (`google/siglip-*`): general-domain; no chest X-ray figures: n/a.
Your set differs from those test sets (findings, prevalence, label source), so expect agreement within
a few points of AUC, not equality; a gap of 0.1 or more on most findings points at preprocessing.

Smoke test (random weights, sample data; the numbers mean nothing):
    .venv/bin/python benchmarks/zero_shot.py --sample --model tiny-siglip --bootstrap 50
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

MEDSIGLIP_CARD = "https://developers.google.com/health-ai-developer-foundations/medsiglip/model-card"
BIOMEDCLIP_CARD = "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
SIGLIP_CARD = "https://huggingface.co/google/siglip-base-patch16-224"
#: MedSigLIP @448 zero-shot AUC, CheXpert test (518 examples), model card / MedGemma report Table 16.
MEDSIGLIP_PUBLISHED = {
    "Enlarged Cardiomediastinum": 0.858, "Cardiomegaly": 0.904, "Lung Opacity": 0.931, "Lung Lesion": 0.822,
    "Consolidation": 0.880, "Edema": 0.891, "Pneumonia": 0.864, "Atelectasis": 0.836, "Pneumothorax": 0.862,
    "Pleural Effusion": 0.914, "Pleural Other": 0.650, "Fracture": 0.708, "Support Devices": 0.852,
    "macro": 0.844,
}
PUBLISHED = {"medsiglip": ("MedSigLIP card", MEDSIGLIP_PUBLISHED, MEDSIGLIP_CARD),
             "biomedclip": ("BiomedCLIP card", {}, BIOMEDCLIP_CARD),
             "siglip-base": ("SigLIP card", {}, SIGLIP_CARD), "siglip-so400m": ("SigLIP card", {}, SIGLIP_CARD)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="folder (or s3:// prefix) of labelled images, as `medvec ingest` takes it")
    p.add_argument("--sample", action="store_true", help="use Medvec's synthetic sample data (smoke test)")
    p.add_argument("--model", default="medsiglip", help="registry name (default medsiglip)")
    p.add_argument("--dataset", help="label format, as `medvec ingest --dataset` (default: detected)")
    p.add_argument("--metadata", help="labels CSV, as `medvec ingest --metadata`")
    p.add_argument("--pad-square", action="store_true", help="zero-pad to a square before resizing (MedSigLIP)")
    p.add_argument("--limit", type=int, help="ingest at most N images")
    p.add_argument("--split", default="test", help="split to score, or 'all' (all images when none carry one)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates over patients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", help="Medvec home to ingest into / reuse (default: a temporary one)")
    p.add_argument("--out", help="write every number as JSON here")
    args = p.parse_args(argv)
    if bool(args.source) == bool(args.sample):
        p.error("give --source DIR or --sample")
    return args


def ingest(args, env: dict, home: Path) -> None:
    """`medvec ingest` into `home`, as a user would run it (skipped when the model's table exists)."""
    from medvec.models.registry import resolve_model
    from medvec.tables import database

    table = f"images__{resolve_model(args.model).slug}"
    if database.open_table_if_exists(database.connect(str(home / "lancedb")), table) is not None:
        print(f"reusing {table} in {home}", file=sys.stderr)
        return
    source = args.source
    if args.sample:
        from medvec.sample.writer import write_sample_data

        source = str(write_sample_data(home.parent / "sample", count=36).out_dir)
    command = [sys.executable, "-m", "medvec.cli", "ingest", source, "--json"]
    for flag, value in (("--dataset", args.dataset), ("--metadata", args.metadata), ("--limit", args.limit)):
        if value is not None:
            command += [flag, str(value)]
    if args.pad_square:
        command.append("--pad-square")
    print(f"ingesting {source} with {args.model} …", file=sys.stderr)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"medvec ingest failed (exit {done.returncode}); see its messages above")


def comparison_table(section: dict, model: str) -> tuple[str, list[dict]]:
    """Markdown rows: finding, positives/negatives, Medvec AUC [CI], the published figure (or n/a + link)."""
    from medvec.evaluation.zero_shot import auc_cell

    title, published, link = PUBLISHED.get(model, (f"{model} card", {}, "no published chest X-ray figures"))
    rows = []
    lines = [f"| finding | +/- | Medvec {model} AUC [95% CI] | {title} (published) |", "|---|---|---|---|"]
    entries = [*section["per_finding"].items(), ("macro", section["macro"])]
    for finding, entry in entries:
        figure = published.get(finding)
        shown = f"{figure:.3f}" if figure is not None else f"n/a ({link})"
        counts = "" if finding == "macro" else f"{entry['positives']}/{entry['negatives']}"
        lines.append(f"| {finding} | {counts} | {auc_cell(entry)} | {shown} |")
        rows.append({"finding": finding, **entry, "published_auc": figure, "published_source": link})
    return "\n".join(lines), rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from medvec.evaluation.zero_shot import evaluate_zero_shot
    from medvec.evaluation.targets import eval_targets
    from medvec.settings import Settings
    from medvec.tables import database

    with tempfile.TemporaryDirectory(prefix="medvec-zero-shot-") as scratch:
        home = Path(args.home) if args.home else Path(scratch) / "home"
        env = {**os.environ, "MEDVEC_HOME": str(home), "MEDVEC_MODEL": args.model,
               "MEDVEC_PSEUDONYM_KEY": os.environ.get("MEDVEC_PSEUDONYM_KEY") or secrets.token_hex(16)}
        env.pop("MEDVEC_LANCEDB_URI", None)
        ingest(args, env, home)
        settings = Settings.from_env(env)
        result = evaluate_zero_shot(database.connect(settings.lancedb_uri), eval_targets(settings, [args.model]),
                                    split=args.split, replicates=args.bootstrap, seed=args.seed,
                                    progress=lambda m: print(m, file=sys.stderr))
    section = result["models"][0]
    if "error" in section:
        sys.exit(f"{args.model}: {section['error']}")
    table, rows = comparison_table(section, args.model)
    print(f"\nzero-shot ROC AUC, {section['images']} labelled images, {section['patients']} patients, "
          f"{section['split'] or 'all'} split; 95% CI from {args.bootstrap} bootstrap replicates over patients\n")
    print(table)
    if args.model.startswith("tiny-"):
        print(f"\n({args.model} has random weights: this run checks the plumbing, not a model)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "split": section["split"], "rows": rows,
                                              "images": section["images"], "patients": section["patients"],
                                              "replicates": args.bootstrap, "seed": args.seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
