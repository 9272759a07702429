"""Shared fixtures: real DICOM from pydicom's packages, a temporary Medvec home, a Dagster instance."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medvec.phi import Pseudonymizer
from medvec.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Debian's headless Chromium, which Playwright drives for the web-page tests (no browser download).
CHROMIUM = Path("/usr/bin/chromium")
#: Screenshots the browser tests leave for a person to look at.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def dicom_testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


def collection_image_id(dicom_path) -> str:
    """The image_id `search_collection` stores for a DICOM file: its SOPInstanceUID replaced by the keyed
    `2.25.` UID (PS3.15). The collection's Settings come from a dict, so its runs use the development key."""
    import pydicom

    uid = str(pydicom.dcmread(dicom_path, stop_before_pixels=True).SOPInstanceUID)
    return Pseudonymizer(None, warn=False, allow_dev_key=True).uid(uid)


@pytest.fixture
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer("test-key", warn=False)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "medvec_home"
    monkeypatch.setenv("MEDVEC_HOME", str(home))
    monkeypatch.setenv("MEDVEC_PSEUDONYM_KEY", "test-key")
    monkeypatch.delenv("MEDVEC_LANCEDB_URI", raising=False)
    monkeypatch.delenv("MEDVEC_SOURCE", raising=False)
    return Settings.from_env()


@pytest.fixture
def dagster_instance():
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright, one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's real S3-compatible HTTP server on a free local port, for every S3 test."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def search_collection(tmp_path_factory):
    """A Medvec home with the sample data ingested, embedded with tiny-siglip and indexed, built once.

    Read-only for tests: copy it (or build your own) to change it. `env` is what a subprocess
    (`medvec serve`, `medvec mcp`) needs to find it.
    """
    import dagster as dg

    from medvec.sample.writer import write_sample_data
    from pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("search_collection")
    # A Settings from a dict: its key is not in os.environ, so in-process runs use the development key.
    env = {"MEDVEC_HOME": str(root / "home"), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_ALLOW_DEV_KEY": "1",
           "MEDVEC_MODEL": "tiny-siglip"}
    settings = Settings.from_env(env)
    sample = write_sample_data(root / "sample", count=36)
    with dg.instance_for_test() as instance:
        summary = ingest(str(sample.out_dir), settings, batch_size=16, instance=instance)
    assert summary.indexed and summary.embedded == 38, summary.to_json()
    return type("SearchCollection", (), {"settings": settings, "env": env, "sample_dir": sample.out_dir,
                                         "summary": summary})


@pytest.fixture(scope="module")
def search(search_collection):
    """An ImageSearch over the shared collection (the encoder loads on first need), per test module."""
    from medvec.search.configured import open_search

    search = open_search(search_collection.settings)
    yield search
    search.close()


# --- CI: a real component that could not be installed fails the run instead of skipping it ---------

#: Words in a skip reason that mean a real component (browser, database, bundle toolchain) was missing.
REAL_COMPONENTS = ("chromium", "playwright", "postgresql", "npm", "node.js", "onnxruntime-web")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MEDVEC_REQUIRE_REAL_COMPONENTS=1 (set by .ci/run), a test skipped for want of a real component
    fails: a green CI then means the browser, database and bundle tests really ran."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("MEDVEC_REQUIRE_REAL_COMPONENTS") == "1"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(word in reason.lower() for word in REAL_COMPONENTS):
        report.outcome = "failed"
        report.longrepr = f"MEDVEC_REQUIRE_REAL_COMPONENTS=1 but a real component is missing: {reason}"
