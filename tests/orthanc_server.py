"""A throwaway Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) for tests: its own JSON config, free
HTTP and DICOM ports, storage in a temporary folder; started, polled until it answers, stopped."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def dicomweb_plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


class Orthanc:
    def __init__(self, folder: Path):
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 60.0) -> "Orthanc":
        binary, plugin = shutil.which("Orthanc") or "/usr/sbin/Orthanc", dicomweb_plugin()
        if not Path(binary).exists() or plugin is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed: "
                               "apt-get install orthanc orthanc-dicomweb (.ci/run does)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "medvec-test", "StorageDirectory": str(self.folder / "storage"),
                  "IndexDirectory": str(self.folder / "storage"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "Plugins": [plugin],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([binary, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # readiness only: poll until it answers
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.dicomweb_url}/studies", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def upload(self, data: bytes) -> dict:
        request = urllib.request.Request(f"{self.url}/instances", data=data, method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def instance_count(self) -> int:
        with urllib.request.urlopen(f"{self.url}/statistics", timeout=10) as response:
            return json.loads(response.read())["CountInstances"]
