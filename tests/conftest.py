"""Shared fixtures: real DICOM from pydicom's packages, a temporary Medvec home, a Dagster instance."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medvec.phi import Pseudonymizer
from medvec.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def dicom_testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's real S3-compatible HTTP server on a free local port, for every S3 test."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
