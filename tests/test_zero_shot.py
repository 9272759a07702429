"""Zero-shot AUC and probes: AUC against scikit-learn, the patient bootstrap against a plain loop,
patient-level (not image-level) resampling, paired differences, probes on a planted signal, and the
CLI, HTTP and MCP surfaces on the shared sample collection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medvec.evaluation.auc import ClusterBootstrap, clusters_of, interval, roc_auc
from medvec.evaluation.retrieval import EvalData
from medvec.datasets.vocabulary import CHEST
from medvec.evaluation.zero_shot import auc_markdown, auc_table, paired_difference

sklearn_metrics = pytest.importorskip("sklearn.metrics")
MEDVEC = str(Path(sys.executable).with_name("medvec"))


# --- AUC -------------------------------------------------------------------------------------------

def test_auc_agrees_with_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(2, 80))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        # Every third trial rounds the scores hard, so many positives and negatives tie.
        scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
        if trial % 3 == 0:
            scores = np.round(scores)
        assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_one_class_is_undefined():
    assert np.isnan(roc_auc([True, True], [0.1, 0.2]))


# --- the patient bootstrap ---------------------------------------------------------------------------

def _reference_bootstrap(labels, scores, subjects, replicates, seed):
    """The textbook loop: draw patients with replacement, take all their images, score with scikit-learn."""
    keys = sorted(set(subjects))
    members = {k: [i for i, s in enumerate(subjects) if s == k] for k in keys}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        drawn = rng.integers(0, len(keys), size=len(keys))
        idx = [i for c in drawn for i in members[keys[c]]]
        y, s = labels[idx], scores[idx]
        out.append(sklearn_metrics.roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan)
    return np.array(out)


def _patients(n_patients=40, per_patient=3, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    subjects = [f"p{p:03d}" for p in range(n_patients) for _ in range(per_patient)]
    sick = rng.random(n_patients) < 0.4
    labels = np.repeat(sick, per_patient)
    scores = np.round(rng.normal(size=len(labels)) + signal * labels, 1)  # rounded: ties too
    return labels, scores, subjects


def test_bootstrap_matches_a_plain_loop_with_the_same_seed():
    labels, scores, subjects = _patients()
    ours = ClusterBootstrap(subjects, replicates=200, seed=7).aucs(labels, scores)
    reference = _reference_bootstrap(labels, scores, subjects, 200, 7)
    np.testing.assert_allclose(ours, reference, atol=1e-12, equal_nan=True)
    # Same seed, same replicates; another seed, others.
    assert np.array_equal(ours, ClusterBootstrap(subjects, 200, seed=7).aucs(labels, scores), equal_nan=True)
    assert not np.allclose(ours, ClusterBootstrap(subjects, 200, seed=8).aucs(labels, scores))


def test_bootstrap_resamples_patients_not_images():
    """Copying every image of every patient ten times adds no evidence: the patient-level interval is
    exactly the one without copies, while an image-level bootstrap would shrink it."""
    labels, scores, subjects = _patients(per_patient=1)
    once = ClusterBootstrap(subjects, 300, seed=3).aucs(labels, scores)
    copies = ClusterBootstrap(np.repeat(subjects, 10).tolist(), 300, seed=3).aucs(np.repeat(labels, 10),
                                                                                 np.repeat(scores, 10))
    np.testing.assert_allclose(copies, once, atol=1e-12)
    as_images = ClusterBootstrap([f"img{i}" for i in range(len(labels) * 10)], 300, seed=3)
    by_image = as_images.aucs(np.repeat(labels, 10), np.repeat(scores, 10))
    width = lambda reps: np.subtract(*interval(reps)[::-1])  # noqa: E731
    assert width(by_image) < 0.5 * width(copies)


def test_interval_covers_the_true_auc_about_95_percent_of_the_time():
    # Scores: positives N(1, 1), negatives N(0, 1), so the true AUC is Phi(1 / sqrt 2).
    from math import erf

    truth = 0.5 * (1 + erf(1 / np.sqrt(2) / np.sqrt(2)))
    covered, trials = 0, 150
    for trial in range(trials):
        rng = np.random.default_rng(100 + trial)
        labels = rng.random(120) < 0.5
        scores = rng.normal(size=120) + labels
        low, high = interval(ClusterBootstrap([str(i) for i in range(120)], 300, seed=trial).aucs(labels, scores))
        covered += low <= truth <= high
    assert 0.87 <= covered / trials <= 0.99


def test_images_without_a_subject_key_are_their_own_patients():
    assert len(set(clusters_of([None, None, "a", "a"]).tolist())) == 3


# --- zero-shot tables and paired differences ---------------------------------------------------------

def _eval_data(labels, subjects) -> EvalData:
    n = len(labels)
    return EvalData(ids=[f"i{i}" for i in range(n)], vectors=np.zeros((n, 2), dtype=np.float32),
                    labels=[{"Pleural Effusion"} if l else {"No Finding"} for l in labels],
                    uncertain=[set() for _ in range(n)], subjects=list(subjects), studies=[None] * n,
                    thumbs=[""] * n, split="test")


def test_auc_table_and_a_model_compared_with_itself():
    labels, scores, subjects = _patients(signal=1.5)
    data = _eval_data(labels, subjects)
    table = auc_table(data, {"Pleural Effusion": scores}, replicates=200)
    entry = table["per_finding"]["Pleural Effusion"]
    assert entry["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-4)
    assert entry["ci_low"] < entry["auc"] < entry["ci_high"] and entry["positives"] == labels.sum()
    assert table["patients"] == 40 and table["macro"]["findings"] == 1

    same = paired_difference((data, {"Pleural Effusion": scores}), (data, {"Pleural Effusion": scores}),
                             replicates=200)
    assert same["per_finding"]["Pleural Effusion"]["difference"] == 0
    assert same["macro"]["ci_low"] == 0 == same["macro"]["ci_high"]
    # A model with the signal against one without: the paired interval of the difference excludes zero.
    noise = np.random.default_rng(9).normal(size=len(labels))
    better = paired_difference((data, {"Pleural Effusion": scores}), (data, {"Pleural Effusion": noise}),
                               replicates=200)["per_finding"]["Pleural Effusion"]
    assert better["ci_low"] > 0
    report = {"models": [{"model": "m", **table}], "comparisons": []}
    assert "| Pleural Effusion | " in auc_markdown(report) and "[" in auc_markdown(report)


def test_every_finding_has_positive_and_negative_prompts():
    for finding, (positive, negative) in CHEST.zero_shot_prompts().items():
        assert positive and negative and not set(positive) & set(negative), finding


# --- probes on a planted signal ---------------------------------------------------------------------

def test_probes_find_a_planted_signal_on_the_test_split(tmp_path):
    """Pleural effusion shifts one direction of otherwise random vectors; the probe fitted on train finds it,
    scores the held-out patients near AUC 1, and re-scores saved vectors the same after a round trip."""
    from medvec.evaluation.probes import fit_probes, load_probes, probe_logits, save_probes

    from .test_evaluation import _table

    rng = np.random.default_rng(4)
    n = 200
    sick = rng.random(n) < 0.4
    vectors = rng.normal(size=(n, 16))
    vectors[:, 3] += 5.0 * sick
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [["Pleural Effusion"] if s else ["No Finding"] for s in sick]
    table = _table(tmp_path, labels, vectors.astype(np.float32), ["train" if i < 140 else "test" for i in range(n)])
    fitted = fit_probes(table, replicates=200)
    effusion = fitted["per_finding"]["Pleural Effusion"]
    assert effusion["auc"] > 0.95 and effusion["ci_low"] > 0.85 and fitted["test_images"] == 60
    assert effusion["positives"] + effusion["negatives"] == 60 and fitted["test_patients"] == 60
    save_probes(tmp_path / "home", fitted)
    probe = load_probes(tmp_path / "home", table.name)["probes"]["Pleural Effusion"]
    test_scores = probe_logits(probe, vectors[140:])
    assert roc_auc(sick[140:], test_scores) == pytest.approx(effusion["auc"], abs=1e-4)


def test_probes_refuse_a_table_without_splits(tmp_path):
    from medvec.evaluation.probes import fit_probes

    from .test_evaluation import _table

    table = _table(tmp_path, [["Edema"], ["No Finding"]] * 3, np.eye(6, dtype=np.float32), [None] * 6)
    with pytest.raises(ValueError, match="no row carries a split"):
        fit_probes(table)


# --- the CLI, HTTP and MCP surfaces on the shared sample collection ---------------------------------

@pytest.fixture(scope="module")
def zero_shot_home(search_collection, tmp_path_factory):
    """A copy of the shared collection with `medvec eval --zero-shot --probes --json` run over it."""
    home = tmp_path_factory.mktemp("zero_shot") / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    env = {**os.environ, **search_collection.env, "MEDVEC_HOME": str(home)}
    result = subprocess.run([MEDVEC, "eval", "--split", "all", "--zero-shot", "--probes", "--bootstrap", "50",
                             "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return type("Evaluated", (), {"home": home, "env": env, "report": json.loads(result.stdout)})


def test_eval_zero_shot_json_carries_auc_with_intervals_and_probes(zero_shot_home):
    zero_shot = zero_shot_home.report["zero_shot"]
    assert zero_shot["replicates"] == 50 and zero_shot["seed"] == 0 and "Pleural Effusion" in zero_shot["prompts"]
    section = next(s for s in zero_shot["models"] if s["model"] == "tiny-siglip")
    assert section["per_finding"] and section["macro"]["findings"] == len(section["per_finding"])
    for entry in [*section["per_finding"].values(), section["macro"]]:
        assert 0 <= entry["auc"] <= 1
        if entry["ci_low"] is not None:
            assert entry["ci_low"] <= entry["ci_high"]
    assert zero_shot["comparisons"] == []  # one model: nothing to pair
    assert (zero_shot_home.home / "eval" / "zero_shot_auc.png").read_bytes()[:4] == b"\x89PNG"
    probes = next(p for p in zero_shot_home.report["probes"] if p["model"] == "tiny-siglip")
    if "error" not in probes:
        assert Path(probes["saved"]).is_file() and "probes" not in probes  # weights stay in the home's file
    human = subprocess.run([MEDVEC, "eval", "--split", "all", "--zero-shot", "--probes", "--bootstrap", "20"],
                           env=zero_shot_home.env, capture_output=True, text=True, timeout=600)
    assert human.returncode == 0 and "AUC [95% CI]" in human.stdout, human.stderr


def _probed_home(zero_shot_home):
    """The probes of the sample's table (its splits are small: skip when none could be fitted)."""
    from medvec.evaluation.probes import load_probes

    probes = load_probes(zero_shot_home.home, "images__tiny_siglip")
    if not probes or "Pleural Effusion" not in probes["probes"]:
        pytest.skip("the sample collection's train split had too few effusions for a probe")
    return probes


def test_http_search_reranks_a_finding_query_by_its_probe(zero_shot_home):
    import httpx

    from medvec.search.configured import open_search
    from medvec.serve.http_api import create_app
    from medvec.settings import Settings

    from .test_http_api import running

    probes = _probed_home(zero_shot_home)
    settings = Settings.from_env({k: v for k, v in zero_shot_home.env.items() if k.startswith("MEDVEC")})
    search = open_search(settings)
    try:
        with running(create_app(search, settings.home)) as base_url, httpx.Client(base_url=base_url) as client:
            answer = client.get("/api/search", params={"q": "pleural effusion", "k": 5, "rerank": "probe"}).json()
            assert answer["route"].endswith("+probe") and answer["query"]["finding"] == "Pleural Effusion"
            assert [h["rank"] for h in answer["hits"]] == list(range(1, len(answer["hits"]) + 1))
            scores = [h["probe_score"] for h in answer["hits"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == 5
            loaded = search.snapshot()
            expected = probe_scores_of(probes, loaded, [h["image_id"] for h in answer["hits"]])
            assert scores == pytest.approx(expected, abs=1e-5)
            refused = client.get("/api/search", params={"q": "a cat on a sofa", "rerank": "probe"})
            assert refused.status_code == 400 and "names a finding" in refused.json()["error"]
            assert client.get("/api/search", params={"q": "edema", "rerank": "bogus"}).status_code == 400
            plot = client.get("/api/eval/zero_shot.png")
            assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"
            assert "zero_shot" in client.get("/api/eval").json()
    finally:
        search.close()


def probe_scores_of(probes, loaded, image_ids):
    from medvec.evaluation.probes import probe_logits

    logits = probe_logits(probes["probes"]["Pleural Effusion"], loaded.index.vectors[[loaded.row_of[i] for i in image_ids]])
    return (1 / (1 + np.exp(-logits))).tolist()


def test_mcp_search_tool_takes_rerank_probe(zero_shot_home):
    import anyio

    from medvec.search.configured import open_search
    from medvec.serve.mcp import build_server
    from medvec.settings import Settings

    _probed_home(zero_shot_home)
    settings = Settings.from_env({k: v for k, v in zero_shot_home.env.items() if k.startswith("MEDVEC")})
    search = open_search(settings)
    try:
        server = build_server(search, settings.home)
        result = anyio.run(server.call_tool, "search_medical_images",
                           {"query": "Pleural effusion", "k": 3, "rerank": "probe"})
        assert not result.is_error, result.content
        hits = result.structured_content["hits"]
        assert len(hits) == 3 and all("probe_score" in h for h in hits)
        assert result.structured_content["route"].endswith("+probe")
    finally:
        search.close()


def test_metrics_tab_shows_zero_shot_auc_with_intervals_and_the_probes(zero_shot_home, browser):
    from medvec.evaluation.zero_shot import auc_cell
    from medvec.settings import Settings

    from .test_web_page import serving

    report = json.loads((zero_shot_home.home / "eval" / "report.json").read_text())  # the latest run's
    section = next(s for s in report["zero_shot"]["models"] if s["model"] == "tiny-siglip")
    settings = Settings.from_env({k: v for k, v in zero_shot_home.env.items() if k.startswith("MEDVEC")})
    with serving(settings) as base_url:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base_url + "/#metrics")
        page.wait_for_selector("#zero-shot-auc tbody tr")
        rows = page.eval_on_selector_all("#zero-shot-auc tbody tr",
                                         "rows => rows.map(r => [r.dataset.finding, r.querySelector('td').textContent])")
        expected = [[f, auc_cell(e)] for f, e in section["per_finding"].items()] + [["macro", auc_cell(section["macro"])]]
        assert rows == expected
        page.wait_for_function("() => document.querySelector('#zero-shot-plot').naturalWidth > 0")
        if report.get("probes"):  # the latest run may have been --zero-shot alone
            probes = next(p for p in report["probes"] if p["model"] == "tiny-siglip")
            assert ("probes not fitted" in page.inner_text("#metrics-probes")) == ("error" in probes)
        else:
            assert page.locator("#metrics-probes").count() == 0
        context.close()
    assert errors == []


def test_finding_probes_asset_saves_the_probes_and_reports_their_auc(zero_shot_home, dagster_instance):
    import dagster as dg

    from assets.evaluation import finding_probes
    from medvec.home import probes_file
    from medvec.settings import Settings
    from resources import home_resources

    settings = Settings.from_env({k: v for k, v in zero_shot_home.env.items() if k.startswith("MEDVEC")})
    saved = probes_file(settings.home, "images__tiny_siglip")
    saved.unlink(missing_ok=True)
    result = dg.materialize([finding_probes], instance=dagster_instance, resources=home_resources(settings),
                            run_config={"ops": {"finding_probes": {"config": {"bootstrap": 20}}}})
    assert result.success
    [event] = result.asset_materializations_for_node("finding_probes")
    metadata = event.metadata
    if "tiny-siglip_error" in metadata:
        assert not saved.exists()
        return
    assert "| **macro** |" in metadata["tiny-siglip_probe_auc"].value and saved.is_file()
    assert 0 <= metadata["tiny-siglip_macro_auc"].value <= 1


def test_cli_search_rerank_probe(zero_shot_home):
    _probed_home(zero_shot_home)
    done = subprocess.run([MEDVEC, "search", "pleural effusion", "--k", "4", "--rerank-probe", "--json"],
                          env=zero_shot_home.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["query"]["rerank"] == "probe" and len(answer["hits"]) == 4
    assert [h["probe_score"] for h in answer["hits"]] == sorted((h["probe_score"] for h in answer["hits"]),
                                                                reverse=True)
    refused = subprocess.run([MEDVEC, "search", "cat", "--rerank-probe"], env=zero_shot_home.env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "names a finding" in refused.stderr
