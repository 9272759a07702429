"""The search page in headless Chromium against a real `medvec serve` app: search, detail, find-similar,
image upload, the token form, reports (studies with marked words, routes, the detail panel's report, report text
kept as text), the metrics view over a real `medvec eval` report, and no request leaving the server's origin."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from medvec.tables import database
from medvec.serve.http_api import create_app
from medvec.search.configured import open_search
from medvec.settings import Settings
from tests.conftest import ARTIFACTS, CHROMIUM
from tests.test_http_api import REPORTS_TABLE, evaluated_home, home_without_reports, running

TOKEN = "page-token-for-tests"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's Chromium at /usr/bin/chromium (apt install chromium)"),
]


DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


@pytest.fixture(scope="module")
def site(search, search_collection):
    with running(create_app(search, search_collection.settings.home)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def evaluated_site(search_collection, tmp_path_factory):
    """A server over a copy of the collection that `medvec eval --split all` has run on, and its report."""
    settings = evaluated_home(search_collection, tmp_path_factory.mktemp("evaluated_site"))
    search = open_search(settings)
    report = json.loads((settings.home / "eval" / "report.json").read_text())
    with running(create_app(search, settings.home)) as base_url:
        yield type("EvaluatedSite", (), {"url": base_url, "report": report})
    search.close()


@contextlib.contextmanager
def serving(settings: Settings):
    search = open_search(settings)
    try:
        with running(create_app(search, settings.home)) as base_url:
            yield base_url
    finally:
        search.close()


#: Report text that is markup; the page must show it as text. The words around it still match the query.
MARKUP = 'Small left <img src="/x" onerror="window.pwned = 1"> effusion <b>bold</b> <script>window.pwned = 2</script>.'
MARKED_STUDY = "CXR10_0"  # an Open-I sample study whose impression reads "Small left pleural effusion."


@pytest.fixture(scope="module")
def marked_up_site(search_collection, tmp_path_factory):
    """A copy of the collection where one report's impression is markup."""
    home = tmp_path_factory.mktemp("marked_up") / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    settings = Settings.from_env({**search_collection.env, "MEDVEC_HOME": str(home)})
    table = database.connect(settings.lancedb_uri).open_table(REPORTS_TABLE)
    table.update(where=f"study_key = '{MARKED_STUDY}'", values={"impression": MARKUP})
    with serving(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def no_reports_site(search_collection, tmp_path_factory):
    with serving(home_without_reports(search_collection, tmp_path_factory.mktemp("no_reports"))) as base_url:
        yield base_url


@pytest.fixture
def page(browser, site):
    """A fresh page that records every request it makes and every script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.requests = []
    page.errors = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def search_for(page, text: str) -> list[str]:
    page.fill("#q", text)
    page.click("#search-button")
    page.wait_for_selector(".card")
    page.wait_for_function("() => [...document.querySelectorAll('.card img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    return card_ids(page)


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.imageId)")


def off_origin(urls: list[str], origin: str) -> list[str]:
    """Requests that are neither to the server nor blob:/data: URLs the page made from its answers."""
    allowed = (origin + "/", f"blob:{origin}/", "data:")
    return [url for url in urls if not url.startswith(allowed)]


def test_search_shows_thumbnails_scores_detail_and_similar(page, site):
    page.goto(site + "/")
    page.wait_for_selector("#filter-view .chip")  # filter values came from /api/stats
    assert "tiny-siglip" in page.inner_text("#status")
    assert not page.is_visible("#token-form") and not page.is_visible("#detail")

    first = search_for(page, "pleural effusion")
    assert len(first) == 12  # the page's default k
    widths = page.eval_on_selector_all(".card img.thumb", "imgs => imgs.map(i => i.naturalWidth)")
    assert all(width > 0 for width in widths)
    scores = page.eval_on_selector_all(".card .score", "nodes => nodes.map(n => parseFloat(n.textContent))")
    assert len(scores) == 12 and scores == sorted(scores, reverse=True)
    assert "route fallback" in page.inner_text("#summary") and " ms" in page.inner_text("#summary")

    page.click(f".card[data-image-id='{first[2]}'] img")
    page.wait_for_selector("#detail:not([hidden])")
    assert page.inner_text("#detail-meta .image-id") == first[2]
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")

    page.click(f".card[data-image-id='{first[2]}'] .similar")
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('similar to')")
    similar = card_ids(page)
    assert similar != first and first[2] not in similar

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_search.png"), full_page=True)
    save_docs_screenshot(page, "search-page.png")
    assert off_origin(page.requests, site) == []
    assert page.errors == []


def save_docs_screenshot(page, name: str) -> None:
    """With MEDVEC_DOCS_SCREENSHOTS=1 (`make docs-screenshots`), keep the page as the README and docs show
    it: docs/images/NAME, the viewport only, in 64 colours so the committed PNG stays small."""
    if os.environ.get("MEDVEC_DOCS_SCREENSHOTS") != "1":
        return
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    shot = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.Resampling.LANCZOS)
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=64).save(DOCS_IMAGES / name, optimize=True)


def test_view_filter_and_k_narrow_the_results(page, site):
    page.goto(site + "/")
    page.wait_for_selector("#filter-view .chip")
    page.fill("#k", "5")
    page.check("#filter-view input[value='LATERAL']")
    search_for(page, "an opacity that is in no fallback list")
    views = page.eval_on_selector_all(".card .tag.view", "tags => tags.map(t => t.textContent)")
    assert views == ["LATERAL"] * 5
    assert "route index" in page.inner_text("#summary")


def test_uploading_a_dicom_shows_that_image_first(page, site, search_collection):
    dicom = Path(search_collection.sample_dir) / "synthetic" / "chest_005.dcm"
    page.goto(site + "/")
    page.set_input_files("#upload", str(dicom))
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('chest_005.dcm')")
    top_score = float(page.inner_text(".card .score"))
    assert top_score == pytest.approx(1.0, abs=1e-3)
    assert off_origin(page.requests, site) == []


def test_a_bad_upload_shows_the_reason(page, site, search_collection):
    page.goto(site + "/")
    page.set_input_files("#upload", str(Path(search_collection.sample_dir) / "broken" / "notes.txt"))
    page.wait_for_selector("#error:not([hidden])")
    assert "could not be read as an image" in page.inner_text("#error")


def test_the_page_takes_a_token_once_and_sends_it_with_every_request(browser, search, search_collection):
    with running(create_app(search, search_collection.settings.home, token=TOKEN)) as base_url:
        context = browser.new_context()
        page = context.new_page()
        auth = []
        page.on("request", lambda r: auth.append((r.url, r.headers.get("authorization"))) if "/api/" in r.url else None)
        page.goto(base_url + "/")
        page.wait_for_selector("#token-form", state="visible")  # no token yet: the page asks for it

        page.goto(f"{base_url}/?token={TOKEN}")
        page.wait_for_selector("#filter-view .chip")
        assert "token=" not in page.url  # taken out of the address bar (and so out of history)
        assert page.evaluate("sessionStorage.getItem('medvec.token')") == TOKEN
        search_for(page, "cardiomegaly")
        page.reload()  # sessionStorage keeps it for the tab
        search_for(page, "edema")
        page.click("#tab-metrics")
        page.wait_for_selector("#metrics-empty", state="visible")  # past the token: this home has no report
        context.close()
    protected = [(url, header) for url, header in auth if "/api/health" not in url]
    assert any("/thumbnail" in url for url, _ in protected) and any(url.endswith("/api/eval") for url, _ in protected)
    assert all(header == f"Bearer {TOKEN}" for _, header in protected)  # without one it asked /api/health only


# --- reports ---------------------------------------------------------------------------------------

def search_reports_for(page, text: str) -> None:
    page.fill("#q", text)
    page.click("#search-button")
    page.wait_for_selector(".study")
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")


SHOWN_STUDIES = """studies => studies.map(s => ({
  id: s.dataset.reportId, snippet: s.querySelector('.snippet').textContent,
  marks: [...s.querySelectorAll('.snippet mark')].map(m => m.textContent),
  routes: s.querySelector('.tag.route').textContent,
  images: [...s.querySelectorAll('.study-image')].map(f => f.dataset.imageId),
  widths: [...s.querySelectorAll('.study-image img')].map(i => i.naturalWidth)}))"""
SHOWN_CARDS = """cards => cards.map(c => [c.dataset.imageId, c.querySelector('.tag.route')?.textContent ?? null,
  c.querySelector('.snippet')?.textContent ?? null])"""


def test_reports_toggle_shows_studies_with_marked_words_thumbnails_and_routes(page, site):
    page.goto(site + "/")
    page.wait_for_selector("#filter-view .chip")
    health = httpx.get(f"{site}/api/health").json()
    assert f"{health['reports']} reports" in page.inner_text("#status")
    assert page.is_enabled("#reports") and page.is_disabled("#mode")
    page.check("#reports")
    assert page.is_enabled("#mode") and page.input_value("#mode") == "hybrid"
    search_reports_for(page, "small left effusion")

    params = {"q": "small left effusion", "k": 12, "reports": "true", "mode": "hybrid"}
    expected = httpx.get(f"{site}/api/search", params=params, timeout=60).json()
    studies = page.eval_on_selector_all(".study", SHOWN_STUDIES)
    assert [s["id"] for s in studies] == [s["report_id"] for s in expected["studies"]]
    for shown, want in zip(studies, expected["studies"]):
        assert shown["snippet"] == want["snippet"]
        assert shown["marks"] == [want["snippet"][start:end] for start, end in want["highlights"]]
        assert shown["routes"] == "+".join(want["routes"])
        assert shown["images"] == [i["image_id"] for i in want["images"]] and all(w > 0 for w in shown["widths"])
    top = page.locator(".study").first
    assert top.locator("mark", has_text=re.compile(r"^effusion$", re.IGNORECASE)).count() == 1
    assert top.locator(".study-image img").count() == len(expected["studies"][0]["images"]) > 0

    # The merged images: how each was found, and the snippet of the report that found it.
    assert page.eval_on_selector_all(".card", SHOWN_CARDS) == [
        [i["image_id"], "+".join(i["routes"]), i["report"]["snippet"] if i["report"] else None]
        for i in expected["images"]]
    assert {"image+report"} <= set(page.eval_on_selector_all(".card .tag.route", "ts => ts.map(t => t.textContent)"))
    assert page.locator(".card .snippet mark").count() > 0
    summary = page.inner_text("#summary")
    assert "12 studies and 12 images" in summary and "reports hybrid" in summary
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_reports.png"), full_page=True)

    # A study's thumbnail opens the image; the panel shows its report's sections.
    image_id = expected["studies"][0]["images"][0]["image_id"]
    page.click(f".study .study-image[data-image-id='{image_id}']")
    page.wait_for_selector("#detail-reports .report")
    assert page.inner_text("#detail-meta .image-id") == image_id
    want = httpx.get(f"{site}/api/images/{image_id}/reports").json()["reports"]
    shown = page.eval_on_selector_all("#detail-reports .report", """reports => reports.map(r => [r.dataset.reportId,
        Object.fromEntries([...r.querySelectorAll('dd')].map(d => [d.dataset.section, d.textContent]))])""")
    assert shown == [[r["report_id"], {k: r[k] for k in ("indication", "findings", "impression") if r[k]}]
                     for r in want]
    assert set(shown[0][1]) == {"indication", "findings", "impression"}

    # Find similar with reports: each similar image with its report's impression.
    page.click("#detail-similar")
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('similar to')")
    assert not page.is_visible("#studies")
    similar = httpx.get(f"{site}/api/similar/{image_id}", params={"k": 12, "reports": "true"}).json()["hits"]
    lines = page.eval_on_selector_all(".card", "cards => cards.map(c => [c.dataset.imageId, "
                                               "c.querySelector('.impression').textContent])")
    assert lines == [[h["image_id"], f"Impression: {h['reports'][0]['impression']}" if h["reports"]
                      else "No report for this image."] for h in similar]
    assert "with reports" in page.inner_text("#summary")

    # Words only: every study was found by BM25; reports off: the plain image search again.
    page.select_option("#mode", "bm25")
    search_reports_for(page, "small left effusion")
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('reports bm25')")
    assert set(page.eval_on_selector_all(".study .tag.route", "ts => ts.map(t => t.textContent)")) == {"bm25"}
    page.uncheck("#reports")
    page.wait_for_function("() => document.querySelector('#studies').hidden")
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('route ')")
    assert page.locator(".card .tag.route").count() == 0 and page.is_disabled("#mode")

    assert off_origin(page.requests, site) == []
    assert page.errors == []


def test_report_text_that_is_markup_is_shown_as_text(page, marked_up_site):
    page.goto(marked_up_site + "/")
    page.wait_for_selector("#filter-view .chip")
    page.check("#reports")
    search_reports_for(page, "small left effusion")
    study = page.locator(f".study[data-study-key='{MARKED_STUDY}']")
    snippet = study.locator(".snippet")
    assert snippet.text_content() == MARKUP
    assert snippet.evaluate("p => [...p.querySelectorAll('*')].map(e => e.tagName)") == ["MARK"] * 3
    assert snippet.locator("mark").all_text_contents() == ["Small", "left", "effusion"]
    through = page.locator(".card .snippet", has_text="onerror")
    assert through.count() >= 1 and through.first.evaluate("p => p.querySelectorAll('img, b, script').length") == 0

    study.locator(".study-image").first.click()
    page.wait_for_selector("#detail-reports .report")
    impression = page.locator("#detail-reports dd[data-section='impression']")
    assert impression.text_content() == MARKUP
    assert page.evaluate("document.querySelectorAll('#detail-reports img, #detail-reports b, main b').length") == 0
    assert page.evaluate("window.pwned === undefined")
    assert not [url for url in page.requests if url.endswith("/x")]
    assert page.errors == []


def test_without_reports_the_toggle_is_off_and_image_search_works(page, no_reports_site):
    page.goto(no_reports_site + "/")
    page.wait_for_selector("#filter-view .chip")
    assert page.is_disabled("#reports") and page.is_disabled("#mode")
    assert "no reports" in page.get_attribute("#reports-toggle", "title")
    assert "reports" not in page.inner_text("#status")
    first = search_for(page, "pleural effusion")
    page.click(f".card[data-image-id='{first[0]}'] img")
    page.wait_for_selector("#detail:not([hidden])")
    assert not page.is_visible("#detail-reports") and not page.is_visible("#studies")
    assert not [url for url in page.requests if "reports" in url]
    assert off_origin(page.requests, no_reports_site) == [] and page.errors == []


# --- the metrics view ------------------------------------------------------------------------------

def test_metrics_view_shows_the_report_numbers_plot_and_hard_cases(page, evaluated_site):
    report, site = evaluated_site.report, evaluated_site.url
    section = report["models"][0]
    t2i, i2i = section["text_to_image"], section["image_to_image"]
    page.goto(site + "/")
    page.wait_for_selector("#filter-view .chip")
    page.click("#tab-metrics")
    page.wait_for_selector("#metrics-models tbody tr")
    assert page.url.endswith("#metrics")
    assert not page.is_visible("#search-form") and not page.is_visible(".filters")

    # Side by side: one row per task, every number as `medvec eval` prints it (three decimals).
    names = [f"recall@{k}" for k in report["ks"]] + ["mrr", "map"]
    assert page.eval_on_selector_all("#metrics-models thead th", "ths => ths.map(t => t.textContent)") == [
        "Model", "Task", "R@1", "R@5", "R@10", "MRR", "mAP", "Queries"]
    tasks = page.eval_on_selector_all("#metrics-models tr[data-model='tiny-siglip']", "rows => rows.map(r => r.dataset.task)")
    assert tasks == ["text", "image", "chance"]
    for task, values in (("text", t2i["macro"]), ("image", i2i), ("chance", section["chance"])):
        shown = page.eval_on_selector_all(f"#metrics-models tr[data-task='{task}'] td[data-metric]",
                                          "cells => cells.map(c => [c.dataset.metric, c.textContent])")
        assert shown == [[name, f"{values[name]:.3f}"] for name in names]
    assert page.inner_text("#metrics-models tr[data-task='image'] .queries") == str(i2i["queries"])
    assert page.inner_text("#metrics-models tr[data-task='text'] .queries") == (
        f"{sum(m['queries'] for m in t2i['per_finding'].values())} ({t2i['macro']['findings']} findings)")
    assert "tiny-siglip has random weights" in page.inner_text("#metrics-body > .callout.warn")

    # Per finding, in the report's order.
    model = page.locator(".eval-model[data-model='tiny-siglip']")
    rows = model.locator(".per-finding tbody tr")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.finding)") == list(t2i["per_finding"])
    cells = rows.evaluate_all("rows => rows.map(r => [...r.querySelectorAll('td[data-metric]')].map(c => c.textContent))")
    # Exact halves such as 1/16 = 0.0625 round to even, as Python prints them (0.062), not up as toFixed would.
    assert cells == [[f"{m[name]:.3f}" for name in names] for m in t2i["per_finding"].values()]
    assert f"{i2i['queries']} labelled images each queried the rest" in model.inner_text()

    # The plot and the hard cases' thumbnails arrive as blobs.
    page.wait_for_function("() => document.querySelector('#metrics-plot').naturalWidth > 0")
    assert page.eval_on_selector("#metrics-plot", "img => [img.naturalWidth, img.src.slice(0, 5)]") == [640, "blob:"]
    page.wait_for_function("() => [...document.querySelectorAll('.worst-image img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    for finding, cases in t2i["hard_cases"].items():
        case = model.locator(f".hard-case[data-finding='{finding}']")
        assert case.locator(".worst-image").evaluate_all("fs => fs.map(f => f.dataset.imageId)") == [
            image["image_id"] for image in cases["worst_ranked"]]
        chips = case.locator(".instead .tag").evaluate_all("cs => cs.map(c => [c.dataset.finding, c.querySelector('b').textContent])")
        assert chips == [[other, str(count)] for other, count in cases["confused_with"].items()]
    shown = page.eval_on_selector_all(".worst-image img", "imgs => imgs.length")
    assert shown == sum(len(cases["worst_ranked"]) for cases in t2i["hard_cases"].values()) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_metrics.png"), full_page=True)

    # A hard case opens in the detail panel; find-similar answers in the search view.
    worst = next(iter(t2i["hard_cases"].values()))["worst_ranked"][0]["image_id"]
    page.click(f".worst-image[data-image-id='{worst}']")
    page.wait_for_selector("#detail:not([hidden])")
    assert page.inner_text("#detail-meta .image-id") == worst
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
    page.click("#detail-similar")
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('similar to')")
    assert page.url.endswith("#search") and page.is_visible("#search-form")
    assert card_ids(page) and worst not in card_ids(page)

    assert off_origin(page.requests, site) == []
    assert page.errors == []


def test_metrics_view_says_how_to_get_a_report_when_there_is_none(page, site):
    page.goto(site + "/#metrics")  # the shared collection has never been evaluated
    page.wait_for_selector("#metrics-empty", state="visible")
    empty = page.inner_text("#metrics-empty")
    assert "No evaluation yet" in empty and "medvec eval" in empty and "retrieval_evaluation" in empty
    assert page.locator("#metrics-models").count() == 0 and not page.is_visible("#error")
    page.click("#tab-search")
    page.wait_for_selector("#search-form", state="visible")
    assert page.is_visible(".filters") and not page.is_visible("#view-metrics")
    assert off_origin(page.requests, site) == [] and page.errors == []


def test_api_docs_render_with_the_network_cut(browser, site):
    """/docs (Swagger UI) loads its script and stylesheet from the server itself, so it renders offline."""
    context = browser.new_context()
    blocked = []

    def only_local(route):
        url = route.request.url
        if url.startswith(site + "/"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.goto(site + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent.trim())")
    assert "/api/search" in "".join(paths)
    assert page.title().startswith("Medvec search")
    assert blocked == []
    context.close()


def test_the_page_names_a_random_weights_model(page, site):
    from medvec.models.registry import RANDOM_WEIGHTS_NOTE

    page.goto(site)
    page.wait_for_selector("#model-note:not([hidden])")
    assert RANDOM_WEIGHTS_NOTE in page.text_content("#model-note")
