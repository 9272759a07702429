"""A CLI that teaches: `medvec` alone shows the workflow, every option says what it does, `--version`
answers, and `medvec search ... --json | head` ends quietly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from medvec.cli import WORKFLOW, build_parser

MEDVEC = str(Path(sys.executable).with_name("medvec"))


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for name, command in {"medvec": parser, **_commands(parser)}.items():
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_medvec_alone_lists_the_commands_in_workflow_order_with_examples():
    out = subprocess.run([MEDVEC], capture_output=True, text=True, check=True).stdout
    listed = [line.split()[0] for line in out.splitlines()
              if line.startswith("    ") and line.split() and line.split()[0] in WORKFLOW]
    assert listed[:5] == ["demo", "ingest", "search", "similar", "serve"]
    assert "examples:" in out and 'medvec search "pleural effusion"' in out


def test_version_comes_from_the_installed_package():
    from importlib.metadata import version

    out = subprocess.run([MEDVEC, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"medvec {version('medvec')}"


def test_an_unknown_value_lists_the_allowed_ones():
    result = subprocess.run([MEDVEC, "normalize", "x", "y", "--window", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "'header', 'percentile'" in result.stderr


def test_a_closed_pipe_ends_without_a_traceback(tmp_path):
    # `medvec models --json | head` where head has already left: the read end is closed before medvec
    # writes, so its first write meets a broken pipe (deterministic, unlike racing a real head).
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([MEDVEC, "models", "--json"], stdout=write_end, stderr=subprocess.PIPE, env=env,
                                text=True)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141


def test_json_into_head_ends_quietly(tmp_path):
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home")}
    result = subprocess.run(f"'{MEDVEC}' models --json | head -n 1", shell=True, env=env, capture_output=True,
                            text=True)
    assert result.stdout == "[\n" and "Traceback" not in result.stderr
