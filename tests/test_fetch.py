"""`medvec fetch` against a real local HTTP server in PhysioNet's layout: 401 without credentials,
connections dropped mid-file, Range honoured; resumes without refetching bytes, refuses corrupt files."""

from __future__ import annotations

import base64
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medvec.datasets.fetch import FetchError, fetch_dataset

USER, PASSWORD = "reader", "s3cret-pass"
IMAGE = bytes(range(256)) * 400  # 102,400 bytes
OTHER = b"\x89PNG" + bytes(5000)
REPORT = b"FINDINGS: no effusion.\n"


class DatasetServer:
    """Serves `files` under /files/mimic-cxr-jpg/2.1.0/; counts body bytes per path; can cut one file."""

    def __init__(self, files: dict[str, bytes], served: dict[str, bytes] | None = None):
        self.files, self.served_bodies = files, served or {}
        self.bytes_served: dict[str, int] = {}
        self.cut_once: dict[str, int] = {}  # path -> byte count after which the first response is cut
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="PhysioNet"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = self.path.split("/files/mimic-cxr-jpg/2.1.0/", 1)[-1]
                if path not in outer.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.served_bodies.get(path, outer.files[path])
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if path in outer.cut_once:
                    chunk = chunk[:outer.cut_once.pop(path)]
                    self.close_connection = True
                self.wfile.write(chunk)
                self.wfile.flush()
                outer.bytes_served[path] = outer.bytes_served.get(path, 0) + len(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/files/mimic-cxr-jpg/2.1.0/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _layout() -> dict[str, bytes]:
    files = {"files/p10/p10000032/s50414267/a.jpg": IMAGE, "files/p10/p10000032/s50414267/b.jpg": OTHER,
             "files/p11/p11000011/s50000001.txt": REPORT}
    sums = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in sorted(files.items()))
    return {**files, "SHA256SUMS.txt": sums.encode()}


def test_credentials_are_required_and_never_echoed(tmp_path):
    with DatasetServer(_layout()) as server:
        with pytest.raises(FetchError, match="set PHYSIONET_USERNAME"):
            fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url)
        with pytest.raises(FetchError, match="refused access \\(401\\)") as caught:
            fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password="wrong")
        assert "wrong" not in str(caught.value) and USER not in str(caught.value)


def test_a_file_cut_at_half_resumes_without_fetching_the_first_half_again(tmp_path):
    image = "files/p10/p10000032/s50414267/a.jpg"
    with DatasetServer(_layout()) as server:
        server.cut_once[image] = len(IMAGE) // 2
        summary = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert server.bytes_served[image] == len(IMAGE)  # half, then the other half: nothing twice
    assert (tmp_path / image).read_bytes() == IMAGE and not (tmp_path / (image + ".part")).exists()
    assert sorted(summary.fetched) == sorted(_layout()) and not summary.refused
    for folder in ("files/p10/p10000032/s50414267", "files/p10", "files/p11/p11000011", "files", ""):
        assert (tmp_path / folder / ".done").exists()
    with DatasetServer(_layout()) as server:  # a second run checks what is there and fetches nothing
        again = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert again.fetched == [] and server.bytes_served.get(image, 0) == 0


def test_a_partial_file_left_by_an_earlier_run_is_resumed(tmp_path):
    image = "files/p10/p10000032/s50414267/a.jpg"
    (tmp_path / image).parent.mkdir(parents=True)
    (tmp_path / (image + ".part")).write_bytes(IMAGE[:30000])
    with DatasetServer(_layout()) as server:
        fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert server.bytes_served[image] == len(IMAGE) - 30000
    assert (tmp_path / image).read_bytes() == IMAGE


def test_a_corrupted_file_is_refused_deleted_and_its_folder_not_marked_done(tmp_path, caplog):
    bad = "files/p10/p10000032/s50414267/b.jpg"
    with DatasetServer(_layout(), served={bad: b"\x89PNG" + bytes(4999) + b"X"}) as server:
        summary = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
    assert summary.refused == [bad]
    assert not (tmp_path / bad).exists() and not (tmp_path / (bad + ".part")).exists()
    assert "does not match SHA256SUMS.txt" in caplog.text
    assert (tmp_path / "files/p10/p10000032/s50414267/a.jpg").exists()
    assert not (tmp_path / "files/p10/p10000032/s50414267/.done").exists() and not (tmp_path / ".done").exists()
    assert (tmp_path / "files/p11/p11000011/.done").exists()  # the complete folder is marked
