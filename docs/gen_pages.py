"""Pages of the docs site generated from the code, so they cannot drift from it: the configuration table
(from `medvec.settings.Settings`), the CLI reference (from `medvec.cli.build_parser()`), the HTTP routes and
`reference/openapi.json` (from the FastAPI app `medvec.serve.http_api.create_app`); the home page and the
benchmarks page are README.md and BENCHMARKS.md.

`mkdocs build` runs this through the mkdocs-gen-files plugin (mkdocs.yml); tests/test_docs.py imports the
page functions directly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG_INTRO = """# Configuration

Every variable below is declared once, with its default and meaning, in `medvec/settings.py` (`Settings`,
read once per process); this table is generated from it when the site is built. A value Medvec cannot use
stops the command, or the code location, with one line:
`MEDVEC_MODEL_DIM='abc' is not allowed: a whole number`.

Secrets (`MEDVEC_PSEUDONYM_KEY`, `HF_TOKEN`, `NVIDIA_API_KEY`, the bearer keys) are read from the environment
and never printed. Where the variables are used: [Operate](../operate.md), [Deploy](../deploy.md),
[Models](../models.md), [From your PACS](../pacs.md).

| variable | default | meaning |
|---|---|---|
"""


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(field) -> str:
    if field.default_factory is not None:
        return "computed"
    if field.default is None or field.default == "":
        return "unset"
    return f"`{_cell(field.default)}`"


def env_names(field) -> list[str]:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(c) for c in choices]
    return [str(alias)] if alias else []


def configuration_page() -> str:
    from medvec.settings import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        names = ", ".join(f"`{n}`" for n in env_names(field)) or f"`{name}`"
        rows.append(f"| {names} | {_default(field)} | {_cell(field.description or '')} |")
    return CONFIG_INTRO + "\n".join(rows) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}


def _option_row(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
        return None
    flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.metavar or action.dest}`"
    choices = f" (one of: {', '.join(map(str, action.choices))})" if action.choices else ""
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or default == [] else f"`{_cell(default)}`"
    return f"| {flags} | {shown} | {_cell((action.help or '') % vars(action) if action.help else '')}{_cell(choices)} |"


def cli_page() -> str:
    from medvec.cli import build_parser

    parser = build_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    out = ["# CLI reference", "",
           "Generated from `medvec.cli.build_parser()` when the site is built. The `--json` output of each "
           "command, and an overview, are on [Command line](../cli.md).", ""]
    for name, (sub, help_text) in _subcommands(parser).items():
        out += [f"## medvec {name}", "", _cell(help_text), "", "```text", sub.format_usage().strip(), "```", ""]
        rows = [r for r in map(_option_row, sub._actions) if r]
        if rows:
            out += ["| argument | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def openapi_schema() -> dict:
    from medvec.search.images import ImageSearch
    from medvec.serve.http_api import create_app

    with tempfile.TemporaryDirectory() as home:  # the schema does not depend on what the home holds
        app = create_app(ImageSearch(f"{home}/lancedb", "tiny_siglip", home=home), home)
        return app.openapi()


def routes_page(schema: dict) -> str:
    out = ["# HTTP API reference", "",
           "Generated from the FastAPI app (`medvec.serve.http_api.create_app`) when the site is built; the "
           "whole schema is [openapi.json](openapi.json). A running `medvec serve` also shows it at `/docs`. "
           "What the answers mean: [HTTP API and web page](../http-api.md).", ""]
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            out += [f"## {method.upper()} `{path}`", "", _cell(op.get("summary", "")), ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | meaning |", "|---|---|---|---|---|"]
                for p in params:
                    kind = p.get("schema", {}).get("type") or ", ".join(
                        s.get("type", "") for s in p.get("schema", {}).get("anyOf", []))
                    out.append(f"| `{p['name']}` | {p['in']} | {kind} | {p.get('required', False)} | "
                               f"{_cell(p.get('description', ''))} |")
                out.append("")
            codes = ", ".join(f"{code} {_cell(r.get('description', ''))}" for code, r in op.get("responses", {}).items())
            out += [f"Answers: {codes}.", ""]
    return "\n".join(out)


def index_page() -> str:
    """The site's home page is the README, its links made relative to docs/."""
    text = (ROOT / "README.md").read_text()
    text = text.replace("](docs/index.md)", "](index.md)").replace("](docs/", "](")
    return text.replace("](BENCHMARKS.md)", "](benchmarks.md)").replace("[`docs/`](index.md)", "`docs/`")


def _write_all() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("index.md", "w") as f:
        f.write(index_page())
    mkdocs_gen_files.set_edit_path("index.md", "../README.md")

    with mkdocs_gen_files.open("reference/configuration.md", "w") as f:
        f.write(configuration_page())
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write(cli_page())
    schema = openapi_schema()
    with mkdocs_gen_files.open("reference/openapi.json", "w") as f:
        json.dump(schema, f, indent=1)
    with mkdocs_gen_files.open("reference/http.md", "w") as f:
        f.write(routes_page(schema))
    with mkdocs_gen_files.open("benchmarks.md", "w") as f:
        f.write((ROOT / "BENCHMARKS.md").read_text())
    mkdocs_gen_files.set_edit_path("benchmarks.md", "../BENCHMARKS.md")


if __name__ in ("__main__", "<run_path>") or __name__.startswith("mkdocs_gen_files"):
    _write_all()
