"""Feedback on long work: `medvec ingest` shows moving bars in a terminal (checked through a real
pseudo-terminal, the way a user's shell runs it) and log lines with counts and rates elsewhere."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medvec.cli.output import ProgressView

MEDVEC = str(Path(sys.executable).with_name("medvec"))


def test_without_a_terminal_progress_is_log_lines_with_counts_and_rates():
    now = [0.0]
    out = io.StringIO()
    view = ProgressView(True, stream=out, tty=False, every=5.0, clock=lambda: now[0])
    for done, at in ((0, 0.0), (10, 1.0), (40, 6.0), (100, 10.0)):
        now[0] = at
        view("batch b1", done, 100)
    lines = out.getvalue().splitlines()
    # The first report, one after the interval (not the one inside it), and the finish.
    assert lines == ["batch b1: 0/100 ...", "batch b1: 40/100, 6.7 img/s ...",
                     "batch b1: 100/100, 10.0 img/s done in 10.0s"]


def test_a_disabled_view_is_silent():
    out = io.StringIO()
    ProgressView(False, stream=out, tty=True)("batch b1", 1, 2)
    assert out.getvalue() == ""


def _run_in_terminal(argv: list[str], env: dict) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return everything it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_ingest_in_a_terminal_shows_a_moving_bar_through_dagster(tmp_path):
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "MEDVEC_MODEL": "tiny-siglip", "MEDVEC_PSEUDONYM_KEY": "progress-test-key", "COLUMNS": "120"}
    env.pop("MEDVEC_EMBEDDER", None)
    subprocess.run([MEDVEC, "sample-data", str(tmp_path / "sample"), "--count", "6"], env=env, check=True,
                   capture_output=True)
    screen = _run_in_terminal([MEDVEC, "ingest", str(tmp_path / "sample"), "--batch-size", "4"], env)
    runs = {int(n) for n, _ in re.findall(r"ingest runs:\s+\d+%\|[^|]*\| (\d+)/(\d+)", screen)}
    assert len(runs) >= 3, screen[-3000:]  # the outer bar moved through several counts
    assert re.search(r"batch b\S+:\s+\d+%\|", screen), "no per-batch bar drawn from inside the Dagster run"
    assert "ingested " in screen  # the final summary
