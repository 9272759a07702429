"""The GPU benchmark cannot rot: its CPU smoke run builds the siglip-base architecture (2 layers), prepares
WebPs on worker processes both ways and writes the table and the JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_dry_run_writes_its_table_and_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["dry_run"] and {(r["prep"], r["dtype"]) for r in res["results"]} == {("cpu", "bfloat16"),
                                                                                    ("gpu", "bfloat16")}
    assert all(r["images"] == 6 and r["images_per_s"] > 0 and r["dim"] == 768 for r in res["results"])
    assert "| bfloat16 | gpu | 4 |" in out.with_suffix(".md").read_text()


def test_the_gpu_script_parses_and_refuses_without_a_gpu_unless_dry_run():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")]).returncode == 0
