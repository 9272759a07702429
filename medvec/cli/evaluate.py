"""`medvec eval`: Recall@K, MRR and mAP per model and finding, saved as a report and a plot in the home."""

from __future__ import annotations

import argparse

from medvec.cli.output import print_json, refuse, stderr_messages
from medvec.datasets.splits import eval_split_argument
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("eval", help="retrieval evaluation: Recall@K, MRR, mAP per finding and per model")
    p.add_argument("--model", action="append", help="registry name; repeat to compare (default: every model table)")
    p.add_argument("--split", default="test", type=eval_split_argument, help="split to evaluate, or 'all' (default test; all when no splits)")
    p.add_argument("--uncertain", choices=("exclude", "positive", "negative"), default="exclude",
                   help="what CheXpert's uncertain (-1) labels mean (default: exclude from that finding)")
    p.add_argument("--json", action="store_true", help="print the report (schema medvec.eval/1)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from medvec.evaluation.retrieval import evaluate_models, markdown_table, save_report
    from medvec.evaluation.targets import eval_targets
    from medvec.tables import database

    settings = get_settings()
    targets = eval_targets(settings, args.model)
    if not targets:
        return refuse("medvec eval: no model tables yet: run `medvec ingest SOURCE` (or `make demo`) first")
    result = evaluate_models(database.connect(settings.lancedb_uri), targets, split=args.split,
                             policy=args.uncertain, progress=stderr_messages(args.json))
    paths = save_report(settings.home, result)
    if args.json:
        print_json(result)
        return 0
    print(f"\nretrieval evaluation, {result['split'] or 'all'} images, uncertain labels: {result['uncertain_policy']}\n")
    print(markdown_table(result))
    for section in result["models"]:
        _print_model_notes(section)
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    return 0


def _print_model_notes(section: dict) -> None:
    """What the summary table cannot say about one model: errors, skipped parts, label sources, per finding."""
    from medvec.evaluation.retrieval import per_finding_table

    if "error" in section:
        print(f"\n{section['model']}: {section['error']}")
        return
    if section["image_to_image"].get("note"):
        print(f"\n{section['model']}: image → image: {section['image_to_image']['note']}")
    if section.get("text_to_image_skipped"):
        print(f"\n{section['model']}: text → image skipped ({section['text_to_image_skipped']})")
    sources = section.get("label_sources") or {}
    if sources.get("reports"):
        print(f"\n{section['model']}: {sources['reports']} image(s) labelled from their reports "
              f"({sources.get('given', 0)} from the labels CSV)")
    agreement = section.get("report_label_agreement")
    if agreement:
        print(f"\n{section['model']}: report-read labels match the given labels exactly for "
              f"{agreement['exact_match']:.0%} of {agreement['images']} image(s)")
    table = per_finding_table(section)
    if table:
        print(f"\n{section['model']}, text → image per finding:\n{table}")
    if section["model"].startswith("tiny-"):
        print(f"({section['model']} has random weights: these numbers show the plumbing, not a model)")
