"""A fault-injecting HTTP proxy for NIM client tests.

It forwards to a real `EmbedServer` and, one scripted fault per `POST /v1/embeddings`, answers
429/5xx instead, stalls, truncates the body, or distorts a real answer (wrong dimension, wrong
count, shuffled `index` order). It records every request it saw, so tests can count retries and
check request bodies.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Fault:
    """What to do to one request. `Fault()` forwards it untouched.

    status: answer this status (with Retry-After when `retry_after` is set) without forwarding.
    stall: answer nothing until the client sends its next request (it gave up: a timeout whatever the
        machine's load, with no sleep to outlast the client's timeout), then forward.
    hold: answer nothing until the test lets it through (`let_through()` one request at a time, or
        `release()` all): a barrier, the request is in flight for as long as the test needs (e.g. to
        kill the client), then forward.
    truncate: cut the real answer's body in half (malformed JSON).
    dim: keep only the first `dim` numbers of each embedding.
    drop: drop this many items from `data` (wrong count).
    shuffle: reverse `data` (the `index` fields stay right, the list order does not).
    """

    status: int | None = None
    retry_after: str | None = None
    stall: bool = False
    hold: bool = False
    truncate: bool = False
    dim: int | None = None
    drop: int = 0
    shuffle: bool = False


@dataclass
class SeenRequest:
    method: str
    path: str
    body: dict | None
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    """Forwards to `upstream`; `inject(...)` queues faults, consumed one per embeddings request."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.seen: list[SeenRequest] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._posted = threading.Condition(self._lock)  # notified on every embeddings request
        self._released, self._passes = False, 0  # held requests go on when released, or one per pass
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="fault-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def posts(self) -> list[SeenRequest]:
        with self._lock:
            return self._embedding_posts()

    def _embedding_posts(self) -> list[SeenRequest]:
        return [seen for seen in self.seen if seen.method == "POST" and seen.path == "/v1/embeddings"]

    def wait_for_posts(self, count: int, timeout_s: float = 120) -> None:
        """A barrier: return once `count` embeddings requests have arrived (the deadline only ends a hang)."""
        with self._posted:
            self._posted.wait_for(lambda: len(self._embedding_posts()) >= count, timeout_s)

    def let_through(self, count: int = 1) -> None:
        """Let `count` held requests (the oldest waiting, or the next to arrive) go on to the server."""
        with self._posted:
            self._passes += count
            self._posted.notify_all()

    def release(self) -> None:
        """Let every held request (and any later `hold` fault) go on to the server."""
        with self._posted:
            self._released = True
            self._posted.notify_all()

    def _wait_to_pass(self) -> None:
        with self._posted:
            self._posted.wait_for(lambda: self._released or self._passes > 0)
            if not self._released:
                self._passes -= 1

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, seen: SeenRequest) -> Fault:
        with self._lock:
            self.seen.append(seen)
            self._posted.notify_all()
            if seen.method == "POST" and seen.path == "/v1/embeddings" and self._faults:
                return self._faults.pop(0)
        return Fault()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _distort(payload: bytes, fault: Fault) -> bytes:
    if fault.truncate:
        return payload[: len(payload) // 2]
    if fault.dim is None and not fault.drop and not fault.shuffle:
        return payload
    answer = json.loads(payload)
    if fault.dim is not None:
        for item in answer["data"]:
            item["embedding"] = item["embedding"][: fault.dim]
    if fault.drop:
        answer["data"] = answer["data"][: -fault.drop]
    if fault.shuffle:
        answer["data"].reverse()
    return json.dumps(answer).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms to every answer

        def log_message(self, *args):
            pass

        def do_GET(self):
            proxy._record(SeenRequest("GET", self.path, None, self.headers.get("Authorization")))
            self._forward(None, Fault())

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            fault = proxy._record(SeenRequest("POST", self.path, body, self.headers.get("Authorization")))
            if fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return self._send(fault.status, json.dumps({"detail": "injected fault"}).encode(), headers)
            if fault.hold:
                proxy._wait_to_pass()
            if fault.stall:
                proxy.wait_for_posts(len(proxy.posts()) + 1)
            self._forward(raw, fault)

        def _forward(self, raw: bytes | None, fault: Fault):
            headers = {key: value for key, value in self.headers.items()
                       if key.lower() in ("content-type", "authorization")}
            request = urllib.request.Request(proxy.upstream + self.path, data=raw, method=self.command,
                                             headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, payload = answer.status, answer.read()
            except urllib.error.HTTPError as error:
                status, payload = error.code, error.read()
            self._send(status, _distort(payload, fault) if status == 200 else payload, {})

        def _send(self, status: int, payload: bytes, headers: dict[str, str]):
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client timed out first: the point of a slow fault

    return Handler
