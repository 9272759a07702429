"""A fault-injecting HTTP proxy for NIM client tests: forwards to a real EmbedServer and, per
request, can answer 429/503 instead, stall, truncate, shuffle or distort the real answer."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    """`faults` is consumed one entry per POST: None forwards untouched; otherwise a dict such as
    {"status": 429, "retry_after": "0.2"}, {"sleep": 2}, {"truncate": True}, {"shuffle": True},
    {"dim": 5}, {"drop_one": True}."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.faults: list[dict | None] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests.append({"path": self.path, "body": json.loads(body or b"{}"),
                                           "auth": self.headers.get("Authorization"), "at": time.monotonic()})
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault and "status" in fault:
                    headers = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else {}
                    return self._send(fault["status"], b'{"detail": "injected"}', headers)
                if fault and "sleep" in fault:
                    time.sleep(fault["sleep"])
                self._forward(body, fault)

            def _forward(self, body, fault=None):
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                                 headers={k: v for k, v in self.headers.items()
                                                          if k.lower() in ("content-type", "authorization")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
                if fault and status == 200:
                    payload = proxy._distort(payload, fault)
                try:
                    self._send(status, payload, {})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected for the slow-answer fault

            def _send(self, status, payload, headers):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _distort(payload: bytes, fault: dict) -> bytes:
        if fault.get("truncate"):
            return payload[: len(payload) // 2]
        answer = json.loads(payload)
        if fault.get("shuffle"):
            answer["data"] = answer["data"][::-1]
        if "dim" in fault:
            for item in answer["data"]:
                item["embedding"] = item["embedding"][: fault["dim"]]
        if fault.get("drop_one"):
            answer["data"] = answer["data"][:-1]
        return json.dumps(answer).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/v1/embeddings"]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
