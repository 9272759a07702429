"""`medvec bundle`: a static folder that searches a model's table in the browser, with no server."""

from __future__ import annotations

import argparse

from medvec.cli.options import add_collection_option
from medvec.cli.output import print_json, refuse, stderr_messages
from medvec.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("bundle", help="a static folder that searches a model's table in the browser, no server")
    p.add_argument("out_dir", help="folder to write (replaced whole; must be new, empty or an earlier bundle)")
    p.add_argument("--model", help="registry name (default: $MEDVEC_MODEL)")
    p.add_argument("--precision", choices=("float16", "int8"), default="float16",
                   help="how the image vectors are packed (default float16; int8 is half the size, lower recall)")
    p.add_argument("--text-precision", choices=("auto", "int8", "float32"), default="auto",
                   help="the ONNX text tower (default auto: int8, a quarter of the bytes, when its top 10 matches "
                        "float32's on the common queries, else float32)")
    p.add_argument("--no-thumbnails", action="store_true", help="leave the thumbnails out")
    add_collection_option(p)
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> int:
    from importlib.util import find_spec

    missing = [name for name in ("onnx", "onnxruntime") if find_spec(name) is None]
    if missing:  # the bundle extra is not part of the default install
        return refuse(f"medvec bundle exports the text tower with {' and '.join(missing)}, not installed here: "
                      "pip install 'medvec[bundle]' (in a checkout: pip install -e '.[bundle]')")
    from medvec.bundle import BundleError, BundleOptions, build_bundle
    from medvec.bundle.build import latest_evaluation
    from medvec.bundle.export_onnx import ExportError
    from medvec.bundle.tokenizer_export import TokenizerNotSupported
    from medvec.embedders.base import EmbedderError
    from medvec.embedders.factory import embedder_config, local_config, open_embedder
    from medvec.search.configured import open_search, search_model_name
    from medvec.search.images import NotIndexed

    settings = get_settings()
    name = search_model_name(settings, args.model)
    search = open_search(settings, name)
    report, plot = latest_evaluation(settings.home)
    options = BundleOptions(precision=args.precision, text_precision=args.text_precision,
                            thumbnails=not args.no_thumbnails)
    try:
        # The text tower is exported from a local copy of the model, whatever embeds the table.
        with open_embedder(local_config(embedder_config(settings, name, kind="local"), device="cpu")) as embedder:
            summary = build_bundle(search, embedder, args.out_dir, home=settings.home, eval_report=report,
                                   eval_plot=plot, options=options, progress=stderr_messages(args.json))
    except (BundleError, NotIndexed, ExportError, TokenizerNotSupported, EmbedderError) as exc:
        return refuse(f"medvec bundle: {exc}")
    finally:
        search.close()
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary, has_report=report is not None)
    return 0


def _print_summary(summary: dict, *, has_report: bool) -> None:
    sizes, checks = summary["sizes"], summary["checks"]
    packing = checks["packing"][summary["precision"]]
    print(f"bundle of {summary['images']} image(s) from {summary['table']} v{summary['table_version']} in "
          f"{summary['out_dir']}: {sizes['total'] / 1e6:.1f} MB (runtime {sizes['runtime'] / 1e6:.1f}, text model "
          f"{sizes['text_model'] / 1e6:.1f}, vectors {sizes['vectors'] / 1e6:.2f}, thumbnails {sizes['thumbs'] / 1e6:.1f})")
    tokenizer = checks["tokenizer"]
    print(f"  checks: ONNX vs PyTorch lowest cosine {checks['onnx']['min_cosine']}; tokenizer "
          + (f"{tokenizer['matching']}/{tokenizer['prompts']} prompts equal" if tokenizer["checked"]
             else f"not checked ({tokenizer['reason']})")
          + f"; {summary['precision']} vectors recall@10 {packing['text_queries']['recall']} (text), "
            f"{packing['image_queries']['recall']} (images)")
    text = checks["text_precision"]
    print(f"  text tower: {text['chosen']} ({text['reason']})")
    if not has_report:
        print("  no evaluation report: run `medvec eval` and build again for the metrics tab")
    print(f"serve it with any static file server, e.g. `python3 -m http.server -d {summary['out_dir']} 8000`, "
          "then open http://127.0.0.1:8000/")
