"""The DICOMweb source's request policy against real HTTP servers on localhost: bounded retries on
connection errors and 5xx only, no retry on a missing instance, the part passed on byte for byte, no
gzip asked for, and no credential in any error."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medvec.sources import SourceUnavailable
from medvec.sources.dicomweb import DicomWebSource, dicomweb_settings

INSTANCE = "/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
PART = b"\0" * 128 + b"DICM" + b"not really a dataset, but bytes to pass on unchanged"
BOUNDARY = "medvec-test-boundary"


class _Archive(BaseHTTPRequestHandler):
    """Answers with `status` (a multipart instance on 200); records each request's headers."""

    status = 200
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers))
        if self.status != 200:
            self.send_response(self.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + PART
                + f"\r\n--{BOUNDARY}--".encode())
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive():
    def start(status: int):
        handler = type("Handler", (_Archive,), {"status": status, "seen": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/dicom-web", handler

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _source(url: str, **env) -> DicomWebSource:
    return DicomWebSource(url, dicomweb_settings({"MEDVEC_DICOMWEB_TOKEN": "s3cret-token", **env}))


def test_instance_bytes_are_the_part_as_sent_without_gzip(archive):
    url, handler = archive(200)
    assert _source(url).read_bytes(url.removesuffix("/dicom-web") + INSTANCE) == PART
    [headers] = handler.seen
    assert headers["Accept-Encoding"] == "identity" and headers["Authorization"] == "Bearer s3cret-token"
    assert "transfer-syntax=*" in headers["Accept"]


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_a_bounded_number_of_times_then_stop_the_batch(archive, status):
    url, handler = archive(status)
    with pytest.raises(SourceUnavailable, match=f"HTTP {status}") as raised:
        _source(url, MEDVEC_DICOMWEB_RETRIES="2").read_bytes(url.removesuffix("/dicom-web") + INSTANCE)
    assert len(handler.seen) == 3 and "s3cret" not in str(raised.value)


def test_a_missing_instance_is_not_retried_and_stays_a_per_file_error(archive):
    import requests

    url, handler = archive(404)
    with pytest.raises(requests.HTTPError):
        _source(url).read_bytes(url.removesuffix("/dicom-web") + INSTANCE)
    assert len(handler.seen) == 1


def test_a_server_that_drops_connections_is_retried_then_reported_unreachable():
    attempts = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def drop():  # accept, then close without a response: a connection error on the client's side
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            attempts.append(1)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    try:
        with pytest.raises(SourceUnavailable, match="did not answer") as raised:
            list(_source(url, MEDVEC_DICOMWEB_RETRIES="1").search_instances())
    finally:
        listener.close()
    assert "s3cret" not in str(raised.value)
    assert len(attempts) == 2  # one try, one retry: the client's own 5-attempt retrying is off


def test_a_server_that_never_answers_times_out_once_without_retries():
    connections = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def hold():  # accept and never answer: the read timeout ends the request
        while True:
            try:
                connections.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    try:
        with pytest.raises(SourceUnavailable, match="did not answer"):
            list(_source(url, MEDVEC_DICOMWEB_READ_TIMEOUT_S="0.2", MEDVEC_DICOMWEB_RETRIES="2").search_instances())
    finally:
        listener.close()
        for conn in connections:
            conn.close()
    assert len(connections) == 1
