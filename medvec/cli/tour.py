"""What `medvec demo` shows around its ingest: the model it picks, the collection it built, a few
searches of each kind and the next steps. Domain only; the demo command itself drives Dagster."""

from __future__ import annotations

from pathlib import Path

from medvec.settings import Settings


def choose_demo_model(settings: Settings) -> Settings:
    """The model a user chose (MEDVEC_MODEL) when this machine has it, else medvec-demo-clip, the small model
    shipped with Medvec and trained on synthetic chest images; said in plain words."""
    from medvec.models.demo_clip import NAME, QUALITY_NOTE
    from medvec.models.registry import model_rows

    chosen = "model" in settings.model_fields_set
    rows = {row["name"]: row for row in model_rows(hub_cache_dirs=[settings.model_cache / "hub", None])}
    row = rows.get(settings.model)
    if _runs_remotely(settings) or (chosen and row and row["available"]):
        note = f" ({row['quality_note']})" if row and row.get("quality_note") else ""
        print(f"embedding with {settings.model}{note}")
        return settings
    if chosen:
        reason = row["why_not"] if row else "not a registry model"
        print(f"{settings.model} is not available here ({reason}).")
    print(f"embedding with {NAME}: a small model shipped with Medvec, {QUALITY_NOTE}. Set MEDVEC_MODEL=siglip-base "
          "(or another model from `medvec models`) where its files can be downloaded.")
    return settings.model_copy(update={"model": NAME})


def _runs_remotely(settings: Settings) -> bool:
    """Whether the configured embedder is a remote service (a NIM): the demo then embeds with it as set."""
    from medvec.embedders.factory import embedder_config

    try:
        return not embedder_config(settings).runs_in_process
    except ValueError:  # an unknown model or a NIM without a URL: the demo's own model takes over
        return False


def show_collection(settings: Settings) -> None:
    """What the home now holds, by view, label and window, plus a contact sheet to look at."""
    from collections import Counter

    from medvec.imaging.webp import contact_sheet
    from medvec.ingest.batches import list_batches, load_batch_records

    records = [r for batch in list_batches(settings.home) for r in load_batch_records(settings.home, batch)]
    if not records:
        return
    views = Counter(r.view_position or "unknown" for r in records)
    labels = Counter(label for r in records for label in (r.labels or ["(unlabelled)"]))
    windows = Counter(r.window_source or "unknown" for r in records)
    syntaxes = Counter((r.transfer_syntax and _syntax_name(r.transfer_syntax)) or r.source_format for r in records)
    print(f"\n{len(records)} image(s) in {settings.home}:")
    for title, counts in (("view", views), ("label", labels), ("grey window", windows), ("encoding", syntaxes)):
        print(f"  by {title:<12} " + ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
    sheet = contact_sheet([(settings.home / r.thumb_uri).read_bytes() for r in records[:48]], columns=12)
    if sheet:
        path = settings.home / "contact_sheet.png"
        path.write_bytes(sheet)
        print(f"  contact sheet:  {path}")


def show_searches(settings: Settings, sample_dir: Path) -> int:
    """A few searches of each kind, printed, so the demo ends where a user starts."""
    from medvec.search.configured import open_search
    from medvec.search.images import Filters, NotIndexed

    search = open_search(settings)
    try:
        queries = [("text (precomputed)", lambda: search.search_text("pleural effusion", 3)),
                   ("text, PA only", lambda: search.search_text("cardiomegaly", 3, Filters.of(view="PA"))),
                   ("text (encoded now)", lambda: search.search_text("small left apical pneumothorax", 3))]
        dicom = next(iter(sorted((sample_dir / "synthetic").rglob("*.dcm"))), None)
        if dicom is not None:
            queries.append((f"image {dicom.name}",
                            lambda: search.search_image(dicom.read_bytes(), 3, filename=dicom.name)))
        print(f"\nsearches over {search.table_name}:")
        first = None
        for title, ask in queries:
            result = ask()
            first = first or result.hits[0].image_id
            _print_hits(title, result)
        if first:
            _print_hits(f"similar to {first[:24]}…", search.similar(first, 3))
        _show_report_search(search)
    except NotIndexed as exc:
        print(f"no search: {exc}")
        return 1
    finally:
        search.close()
    return 0


def show_next_steps(dagster_home: str | None) -> None:
    print("  search in the browser:                  medvec serve   then open http://127.0.0.1:8080")
    print("  search from the terminal:               medvec search \"pleural effusion\" --view PA")
    print("  search reports and images together:     medvec search \"small left effusion\" --reports")
    print("  measure retrieval:                      medvec eval --split all")
    print(f"  browse the asset graph and these runs:  make dagster   (DAGSTER_HOME={dagster_home})")
    print("  ingest your own files:                  medvec ingest /path/to/dicoms --limit 100")


def _show_report_search(search) -> None:
    from medvec.search.reports import NoReports, ReportSearch, mark_text

    try:
        result = ReportSearch(search).search("small left effusion", 2)
    except NoReports:
        return
    print(f"  reports and images for \"small left effusion\" (hybrid BM25 + vector): {result['took_ms']:.1f} ms")
    for study in result["studies"]:
        print(f"    study {study['study_key']} ({study['layout']}): {mark_text(study['snippet'], study['highlights'])}"
              f"  [{len(study['images'])} image(s)]")


def _print_hits(title: str, result) -> None:
    print(f"  {title}: {result.route}, {result.took_ms:.1f} ms")
    for hit in result.hits:
        labels = ", ".join(hit.metadata.get("labels") or []) or "-"
        print(f"    {hit.rank}. {hit.score:.3f}  {hit.image_id[:44]:<44} {hit.metadata.get('view_position') or '-':<8}"
              f" {labels}")


def _syntax_name(uid: str) -> str:
    import pydicom.uid

    return pydicom.uid.UID(uid).name


def run_evaluation(settings: Settings) -> None:
    """`medvec eval --split all` for the demo's model, so the page's Metrics tab has a report to show."""
    from medvec.evaluation.retrieval import evaluate_models, save_report
    from medvec.evaluation.targets import eval_targets
    from medvec.tables import database

    targets = eval_targets(settings, [settings.model])
    if not targets:
        return
    result = evaluate_models(database.connect(settings.lancedb_uri), targets, split="all", policy="exclude")
    paths = save_report(settings.home, result)
    print(f"\nretrieval evaluation of {settings.model} (every image; the page's Metrics tab shows it):")
    for section in result["models"]:
        text, chance = section.get("text_to_image") or {}, section.get("chance") or {}
        if "macro" in text and chance:
            print(f"  text → image mAP {text['macro']['map']:.2f} (chance {chance['map']:.2f}); "
                  f"image → image precision@10 {section['image_to_image']['precision@10']:.2f} "
                  f"(chance {chance['precision@10']:.2f})")
        for finding, m in (text.get("per_finding") or {}).items():
            print(f"  {finding:<18} precision@5 {m['precision@5']:.2f}, mAP {m['map']:.2f}")
    print(f"  report: {paths['json']}")
