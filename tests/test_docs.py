"""The docs site's generated pages cover the code they are generated from: every `Settings` variable is in the
configuration table, every `medvec` command in the CLI reference, every HTTP route in the API reference; and
the README stays a first screen that still shows the two commands."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from medvec.cli import build_parser
from medvec.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen_pages():
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_lists_every_settings_variable(gen_pages):
    page = gen_pages.configuration_page()
    for name, field in Settings.model_fields.items():
        variables = gen_pages.env_names(field)
        assert variables, f"Settings.{name} names no environment variable"
        for variable in variables:
            assert f"`{variable}`" in page, f"{variable} missing from the configuration page"
        if field.description:
            assert field.description.replace("|", "\\|").split("\n")[0] in page


def test_cli_page_lists_every_command_and_option(gen_pages):
    page = gen_pages.cli_page()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 10
    for name, parser in sub.choices.items():
        assert f"## medvec {name}\n" in page, f"medvec {name} missing from the CLI page"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, f"medvec {name} {flag} missing from the CLI page"


def test_http_page_lists_every_route(gen_pages):
    schema = gen_pages.openapi_schema()
    page = gen_pages.routes_page(schema)
    assert "/api/search" in schema["paths"]
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"## {method.upper()} `{path}`" in page


def test_readme_is_one_screen_and_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_000
    assert "make demo" in readme and "make test" in readme
    for link in ("docs/getting-started.md", "docs/pacs.md", "docs/datasets.md", "docs/cli.md"):
        assert (ROOT / link).exists() and f"]({link})" in readme
    assert (ROOT / "docs" / "images" / "search-page.png").exists()
