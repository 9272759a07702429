"""A real local HTTP server for the download tests: files under a path prefix with Range and HEAD, optional
HTTP basic auth (PhysioNet), and optionally Google Cloud Storage's JSON object listing, paginated."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class FileServer:
    """Serves `files` under `prefix`; counts body bytes per path; can cut one response short (`cut_once`)
    and serve other bytes than it lists (`served`). With `bucket`, `/storage/v1/b/<bucket>/o` lists the
    files as the GCS JSON API does, `page_size` objects a page."""

    def __init__(self, files: dict[str, bytes], *, prefix: str = "/", served: dict[str, bytes] | None = None,
                 credentials: tuple[str, str] | None = None, bucket: str | None = None, page_size: int = 2):
        self.files, self.served_bodies, self.prefix = files, served or {}, prefix
        self.bucket, self.page_size = bucket, page_size
        self.bytes_served: dict[str, int] = {}
        self.counting = threading.Lock()  # one handler thread per request
        self.cut_once: dict[str, int] = {}  # path -> byte count after which the first response is cut
        self.listing_pages = 0
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode() if credentials else None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _empty(self, status: int, **headers: str) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            def _authorised(self) -> bool:
                if expected and self.headers.get("Authorization") != expected:
                    self._empty(401, **{"WWW-Authenticate": 'Basic realm="PhysioNet"'})
                    return False
                return True

            def do_HEAD(self):
                path = outer.path_of(self.path)
                if self._authorised():
                    if path in outer.files:
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(outer.files[path])))
                        self.end_headers()
                    else:
                        self._empty(404)

            def do_GET(self):
                if outer.bucket and self.path.startswith(f"/storage/v1/b/{outer.bucket}/o"):
                    return self._send(200, json.dumps(outer.listing_page(self.path)).encode())
                path = outer.path_of(self.path)
                if not self._authorised():
                    return
                if path not in outer.files:
                    return self._empty(404)
                body = outer.served_bodies.get(path, outer.files[path])
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                if start >= len(body) and start:
                    return self._empty(416, **{"Content-Range": f"bytes */{len(body)}"})
                chunk = body[start:]
                cut = outer.cut_once.pop(path, None)
                # Counted before the write: once the client has the last byte it may read the count at once.
                with outer.counting:
                    outer.bytes_served[path] = outer.bytes_served.get(path, 0) + len(chunk[:cut])
                self._send(206 if start else 200, chunk[:cut] if cut is not None else chunk, len(chunk),
                           **({"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if start else {}))

            def _send(self, status: int, body: bytes, length: int | None = None, **headers: str) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body) if length is None else length)}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if length is not None and length != len(body):
                    self.close_connection = True  # cut short: the client sees the line drop mid-file

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}{prefix}"

    def path_of(self, request_path: str) -> str:
        return unquote(urlsplit(request_path).path).split(self.prefix, 1)[-1]

    def listing_page(self, request_path: str) -> dict:
        """One page of `objects.list`: name, size (a string, as GCS gives it) and base64 MD5."""
        query = parse_qs(urlsplit(request_path).query)
        names = sorted(n for n in self.files if n.startswith(query.get("prefix", [""])[0]))
        start = int(query.get("pageToken", ["0"])[0])
        self.listing_pages += 1
        page = {"kind": "storage#objects", "items": [
            {"name": n, "size": str(len(self.files[n])),
             "md5Hash": base64.b64encode(hashlib.md5(self.files[n]).digest()).decode()}
            for n in names[start:start + self.page_size]]}
        if start + self.page_size < len(names):
            page["nextPageToken"] = str(start + self.page_size)
        return page

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
