"""`medvec search` and `medvec similar`: one query over a model's table, images alone or with reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from medvec.cli.options import add_collection_option
from medvec.cli.output import print_json, refuse
from medvec.datasets.splits import split_argument
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("search", help="text → image or image → image search over a model's table")
    p.add_argument("text", nargs="*", help="what to look for, e.g. 'left pleural effusion'")
    p.add_argument("--image", help="a DICOM, PNG or JPEG to search with; with TEXT too, the two are combined")
    p.add_argument("--rerank-probe", action="store_true",
                   help="re-rank a finding query's hits with its probe (fit them with `medvec eval --probes`)")
    _add_search_options(p)
    _add_refine_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", help="the images nearest to a stored image")
    p.add_argument("image_id", help="a stored image id (the first column of `medvec search` output)")
    _add_search_options(p)
    p.set_defaults(func=cmd_similar)


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    parser.add_argument("--view", action="append", help="only this view position (PA, AP, LATERAL, ...); repeatable")
    parser.add_argument("--label", action="append", help="only images with this finding; repeatable (any of)")
    parser.add_argument("--modality", action="append", help="only this modality (CR, DX, ...)")
    parser.add_argument("--split", action="append", type=split_argument, help="only this split (train, validate, test)")
    parser.add_argument("--sex", action="append", help="only this sex (male, female, other); repeatable")
    parser.add_argument("--age-group", action="append", help="only this age group (40-49, AGE_30_TO_39, ...)")
    parser.add_argument("--skin-type", action="append", help="only this Fitzpatrick skin type (FST1 ... FST6)")
    parser.add_argument("--model", help="which model's table (default: $MEDVEC_MODEL)")
    add_collection_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--reports", action="store_true",
                        help="search the reports too: studies with report snippets, images found both ways")
    parser.add_argument("--mode", choices=("hybrid", "bm25", "vector"), default="hybrid",
                        help="report ranking with --reports (default hybrid: BM25 and vector, rank-fused)")


def _add_refine_options(parser: argparse.ArgumentParser) -> None:
    from medvec.search.feedback import TEXT_WEIGHT

    parser.add_argument("--by-study", action="store_true", help="one hit per study: its views and its reports")
    parser.add_argument("--per-patient", type=int, metavar="N", help="at most N hits per patient (subject_key)")
    parser.add_argument("--study-score", choices=("best", "mean"), default="best",
                        help="with --by-study: a study scores as its best view (default) or the mean of its views")
    parser.add_argument("--text-weight", type=float, default=TEXT_WEIGHT,
                        help=f"with --image and TEXT: the text's share of the combined query (default {TEXT_WEIGHT})")
    parser.add_argument("--relevant", action="append", metavar="IMAGE_ID",
                        help="relevance feedback: move the query toward this hit; repeatable")
    parser.add_argument("--not-relevant", action="append", metavar="IMAGE_ID",
                        help="relevance feedback: move the query away from this hit; repeatable")


def _refined(args: argparse.Namespace) -> bool:
    return bool(args.by_study or args.per_patient or args.relevant or args.not_relevant
                or (args.image and args.text))


def cmd_search(args: argparse.Namespace) -> int:
    if args.rerank_probe and (args.reports or args.image):
        return refuse("medvec search --rerank-probe: re-ranks a text query's images; drop --reports and --image")
    if not args.reports and _refined(args):
        return _run_refined_search(args)
    if args.reports:
        if args.image or not args.text:
            return refuse("medvec search --reports: give TEXT (image queries: medvec similar IMAGE_ID --reports)")
        return _run_report_search(args, lambda s: s.search(" ".join(args.text), args.k, _filters(args), args.mode))
    if bool(args.text) == bool(args.image):
        return refuse("medvec search: give either TEXT or --image FILE")
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            return refuse(f"medvec search: no file {path}")
        return _run_search(args, lambda s: s.search_image(path.read_bytes(), args.k, _filters(args), filename=path.name))
    if args.rerank_probe:
        from medvec.search.probe_rerank import search_text_reranked

        return _run_search(args, lambda s: search_text_reranked(s, " ".join(args.text), args.k, _filters(args)))
    return _run_search(args, lambda s: s.search_text(" ".join(args.text), args.k, _filters(args)))


def cmd_similar(args: argparse.Namespace) -> int:
    if args.reports:
        return _run_report_search(args, lambda s: s.similar_with_reports(args.image_id, args.k, _filters(args)))
    return _run_search(args, lambda s: s.similar(args.image_id, args.k, _filters(args)))


def _filters(args: argparse.Namespace):
    from medvec.search.images import Filters

    return Filters.of(view=args.view, modality=args.modality, split=args.split, labels=args.label, sex=args.sex,
                      age_group=args.age_group, skin_type=args.skin_type)


def _answer(args: argparse.Namespace, ask):
    """(`ask`'s answer over the model's search, None), or (None, exit code 2) after a plain message for bad
    input; the search is closed either way."""
    from medvec.search.configured import open_search
    from medvec.search.images import NotIndexed, SearchInputError
    from medvec.search.reports import NoReports

    search = open_search(get_settings(), args.model)
    try:
        return ask(search), None
    except (SearchInputError, NotIndexed, NoReports) as exc:
        return None, refuse(f"medvec: {exc}")
    finally:
        search.close()


def _run_search(args: argparse.Namespace, ask) -> int:
    """Run one query and print it; bad input is a plain message and exit code 2."""
    result, code = _answer(args, ask)
    if result is None:
        return code
    if args.json:
        print_json(result.to_json())
        return 0
    _print_model_note(result.model)
    print(f"{len(result.hits)} hit(s) from {result.table} (v{result.table_version}) via {result.route} "
          f"in {result.took_ms:.1f} ms")
    print(f"{'#':>3}  {'score':>7}  {'image_id':<40} {'view':<8} {'split':<6} labels")
    for hit in result.hits:
        meta = hit.metadata
        print(f"{hit.rank:>3}  {hit.score:>7.4f}  {hit.image_id[:40]:<40} {meta.get('view_position') or '-':<8} "
              f"{meta.get('split') or '-':<6} {', '.join(meta.get('labels') or []) or '-'}")
    return 0


def _run_report_search(args: argparse.Namespace, ask) -> int:
    from medvec.search.reports import ReportSearch

    result, code = _answer(args, lambda search: ask(ReportSearch(search)))
    if result is None:
        return code
    if args.json:
        print_json(result)
        return 0
    _print_model_note(result["model"])
    if "studies" in result:
        _print_studies(result)
    else:
        _print_similar_with_reports(result)
    return 0


def _print_model_note(model: str) -> None:
    from medvec.models.registry import quality_note

    if note := quality_note(model):
        print(f"model {model}: {note}")


def _print_studies(result: dict) -> None:
    from medvec.search.reports import mark_text

    print(f"{len(result['studies'])} report(s) ({result['query']['mode']}) and {len(result['images'])} image(s) "
          f"in {result['took_ms']:.1f} ms")
    for rank, study in enumerate(result["studies"], start=1):
        print(f"{rank:>3}. {study['score']:.4f}  study {study['study_key']} ({study['layout']}, "
              f"{'+'.join(study['routes'])})  {', '.join(study['labels']) or '-'}")
        print(f"       {mark_text(study['snippet'], study['highlights'])}")
        for image in study["images"]:
            print(f"       image {image['image_id'][:44]} {image.get('view_position') or '-'}")
    print("images (direct and through reports; scores are rank-fusion sums, about 0.016-0.033, not cosines):")
    for image in result["images"]:
        print(f"{image['rank']:>3}. {image['score']:.4f}  {image['image_id'][:44]:<44} "
              f"{'+'.join(image['routes']):<13} {', '.join(image.get('labels') or []) or '-'}")


def _print_similar_with_reports(result: dict) -> None:
    print(f"{len(result['hits'])} similar image(s) via {result['route']} in {result['took_ms']:.1f} ms")
    for hit in result["hits"]:
        print(f"{hit['rank']:>3}. {hit['score']:.4f}  {hit['image_id'][:44]:<44} "
              f"{', '.join(hit.get('labels') or []) or '-'}")
        for report in hit["reports"]:
            print(f"       study {report['study_key']}: {report['impression'] or report['findings']}")


def _run_refined_search(args: argparse.Namespace) -> int:
    """Study-level, per-patient, image + text or feedback search: `medvec.search.studies.refined_search`."""
    from medvec.search.feedback import Refinement
    from medvec.search.reports import ReportSearch
    from medvec.search.studies import refined_search

    path = Path(args.image) if args.image else None
    if path is not None and not path.is_file():
        return refuse(f"medvec search: no file {path}")
    result, code = _answer(args, lambda search: refined_search(
        search, k=args.k, filters=_filters(args), text=" ".join(args.text) or None,
        image=path.read_bytes() if path else None, filename=path.name if path else "query",
        refinement=Refinement.of(args.text_weight, args.relevant, args.not_relevant), by_study=args.by_study,
        per_patient=args.per_patient, study_score=args.study_score, reports=ReportSearch(search)))
    if result is None:
        return code
    if args.json:
        print_json(result)
        return 0
    rows = result["studies"] if args.by_study else result["hits"]
    print(f"{len(rows)} {'study hit(s)' if args.by_study else 'hit(s)'} from {result['table']} "
          f"(v{result['table_version']}) via {result['route']} in {result['took_ms']:.1f} ms")
    for row in rows:
        views = row["views"] if args.by_study else [row]
        print(f"{row['rank']:>3}  {row['score']:>7.4f}  " + (f"study {row['study_id']}" if args.by_study else ""))
        for view in views:
            print(f"       {view['image_id'][:44]:<44} {view.get('view_position') or '-':<8} "
                  f"{', '.join(view.get('labels') or []) or '-'}")
        for report in row.get("reports") or []:
            print(f"       report: {report['impression'] or report['findings']}")
    return 0
