"""`medvec eval`: Recall@K, MRR and mAP per model and finding, saved as a report and a plot in the home;
with `--zero-shot`, zero-shot ROC AUC per finding with patient-bootstrap intervals; with `--probes`,
linear probes fitted on the train split and their test AUC."""

from __future__ import annotations

import argparse

from medvec.cli.options import add_collection_option
from medvec.cli.output import print_json, refuse, stderr_messages
from medvec.datasets.splits import eval_split_argument
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("eval", help="retrieval evaluation: Recall@K, MRR, mAP per finding and per model")
    p.add_argument("--model", action="append", help="registry name; repeat to compare (default: every model table)")
    p.add_argument("--split", default="test", type=eval_split_argument, help="split to evaluate, or 'all' (default test; all when no splits)")
    p.add_argument("--uncertain", choices=("exclude", "positive", "negative"), default="exclude",
                   help="what CheXpert's uncertain (-1) labels mean (default: exclude from that finding)")
    p.add_argument("--zero-shot", action="store_true",
                   help="also score each finding zero-shot (positive vs negative prompts): ROC AUC with 95%% CIs")
    p.add_argument("--probes", action="store_true",
                   help="also fit a logistic-regression probe per finding on the train split; test AUC with CIs")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates over patients (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_collection_option(p)
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
    if args.bootstrap < 1:
        return refuse("medvec eval: --bootstrap must be at least 1")
    db, progress = database.connect(settings.lancedb_uri), stderr_messages(args.json)
    result = evaluate_models(db, targets, split=args.split, policy=args.uncertain, progress=progress)
    _add_extras(args, result, db, targets, settings.home, progress)
    paths = save_report(settings.home, result)
    if args.json:
        print_json(result)
        return 0
    print(f"\nretrieval evaluation, {result['split'] or 'all'} images, uncertain labels: {result['uncertain_policy']}\n")
    print(markdown_table(result))
    for section in result["models"]:
        _print_model_notes(section)
    _print_extras(result)
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    return 0


FEW_PATIENTS = 10  # below this many patients a bootstrap interval is mostly noise: say so


def _add_extras(args, result: dict, db, targets, home, progress) -> None:
    from medvec.evaluation.extras import add_zero_shot, fit_and_save_probes

    if args.zero_shot:
        add_zero_shot(result, db, targets, home, replicates=args.bootstrap, seed=args.seed, progress=progress)
    if args.probes:
        result["probes"] = fit_and_save_probes(db, targets, home, policy=args.uncertain, replicates=args.bootstrap,
                                               seed=args.seed, progress=progress)


def _print_extras(result: dict) -> None:
    from medvec.evaluation.probes import probes_markdown
    from medvec.evaluation.zero_shot import auc_markdown

    if result.get("zero_shot"):
        boot = result["zero_shot"]
        print(f"\nzero-shot ROC AUC, 95% CI from {boot['replicates']} bootstrap replicates over patients "
              f"(seed {boot['seed']}):\n{auc_markdown(boot)}")
        for section in boot["models"]:
            if section.get("patients", FEW_PATIENTS) < FEW_PATIENTS:
                print(f"({section['model']}: only {section['patients']} patient(s): the intervals are unreliable)")
    for section in result.get("probes") or []:
        if "error" in section:
            print(f"\n{section['model']}: probes not fitted: {section['error']}")
        elif not section["per_finding"]:
            print(f"\n{section['model']}: no probe could be scored on {section['test_split']}")
        else:
            print(f"\n{section['model']}, linear probes ({section['train_split']} → {section['test_split']}, "
                  f"{section['test_patients']} test patients), saved to {section['saved']}:\n{probes_markdown(section)}")


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
