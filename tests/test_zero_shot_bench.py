"""`benchmarks/zero_shot.py` runs end to end on the sample collection with tiny-siglip (a smoke test: random
weights) and prints the published MedSigLIP figures from the reference, never invented ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.zero_shot import MEDSIGLIP_PUBLISHED, comparison_table  # noqa: E402


def test_benchmark_prints_auc_with_intervals_beside_the_model_card(search_collection, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(search_collection.settings.home, home, symlinks=True)
    out = tmp_path / "zero_shot.json"
    env = {**os.environ, **search_collection.env}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zero_shot.py"), "--sample", "--model",
                           "tiny-siglip", "--home", str(home), "--split", "all", "--bootstrap", "30", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "reusing images__tiny_siglip" in done.stderr  # the copied collection, not a second ingest
    assert "AUC [95% CI]" in done.stdout and "random weights" in done.stdout
    written = json.loads(out.read_text())
    assert written["model"] == "tiny-siglip" and written["rows"][-1]["finding"] == "macro"
    assert all(r["published_auc"] is None for r in written["rows"])  # no card figures for a tiny model


def test_medsiglip_rows_carry_the_published_figure_and_other_findings_say_n_a():
    section = {"per_finding": {"Pleural Effusion": {"auc": 0.9, "ci_low": 0.85, "ci_high": 0.95, "positives": 5,
                                                    "negatives": 9},
                               "No Finding": {"auc": 0.8, "ci_low": 0.7, "ci_high": 0.9, "positives": 9,
                                              "negatives": 5}},
               "macro": {"auc": 0.85, "ci_low": 0.8, "ci_high": 0.9}}
    table, rows = comparison_table(section, "medsiglip")
    assert "| Pleural Effusion | 5/9 | 0.900 [0.850, 0.950] | 0.914 |" in table
    assert "n/a (https://developers.google.com/health-ai-developer-foundations/medsiglip/model-card)" in table
    assert rows[-1]["published_auc"] == MEDSIGLIP_PUBLISHED["macro"] == 0.844
    biomed, _ = comparison_table(section, "biomedclip")
    assert "0.914" not in biomed and "n/a (https://huggingface.co/microsoft/BiomedCLIP" in biomed
