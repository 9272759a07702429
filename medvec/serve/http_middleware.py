"""The HTTP API's guards and error shape: the bearer token, the upload size limit before a body is read,
and every error answered as `{"error": "..."}` (`schema.ErrorOut`) in plain words."""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvec.embedders.base import EmbedderError
from medvec.search.images import NoSuchImage, NotIndexed, SearchInputError
from medvec.search.reports import NoReports
from medvec.serve.schema import ErrorOut

MAX_UPLOAD_BYTES = 20 * 2**20
#: Room for the multipart boundaries and headers around the file when checking Content-Length.
_MULTIPART_SLACK = 64 * 2**10

ERRORS = {400: {"model": ErrorOut, "description": "bad input; `error` says why"},
          404: {"model": ErrorOut, "description": "no such image"},
          503: {"model": ErrorOut, "description": "the model's table does not exist yet, or its encoder cannot load; "
                                                  "with reports, also when the model has no reports table"}}
AUTH_ERRORS = {401: {"model": ErrorOut, "description": "missing or wrong bearer token"}}


def bearer_guard(token: str):
    scheme = HTTPBearer(auto_error=False, description="the server's MEDVEC_API_TOKEN")
    expected = token.encode()

    # A default, not Annotated[...]: with postponed annotations FastAPI would look `scheme` up in globals.
    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "this server needs its token: send `Authorization: Bearer <MEDVEC_API_TOKEN>`",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


# --- errors as {"error": "..."} --------------------------------------------------------------------

def add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return error(400, "; ".join(_plain_validation_error(e) for e in exc.errors()))

    # Domain errors with a plain message for the user. Starlette picks the most specific class first,
    # so NoSuchImage (a SearchInputError) answers 404, not 400.
    for exc_class, status in ((NoSuchImage, 404), (SearchInputError, 400), (NotIndexed, 503), (NoReports, 503)):
        app.add_exception_handler(exc_class, lambda request, exc, status=status: error(status, str(exc)))

    @app.exception_handler(EmbedderError)
    async def encoder_unavailable(request: Request, exc: EmbedderError):
        return error(503, f"the model's encoder is unavailable: {exc}")  # worded as what to do next

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # Starlette re-raises it after this, so uvicorn logs it
        return error(500, "internal error; the server log has the details")


def _plain_validation_error(error: dict) -> str:
    where = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
    return f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}"


class BodyLimit:
    """Refuse a request whose Content-Length is over the limit before its body is read or spooled.

    Bodies sent without a length (chunked) are read, then the endpoint checks the file's size.
    """

    def __init__(self, app, max_upload_bytes: int):
        self.app, self.max_upload_bytes = app, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._declared_length(scope) > self.max_upload_bytes + _MULTIPART_SLACK:
            message = f"the upload is larger than the {mib(self.max_upload_bytes)} limit"
            await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _declared_length(scope) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                return int(value) if value.isdigit() else 0
        return 0


# --- strangers: DNS rebinding and cross-site requests ----------------------------------------------

#: Names a loopback server answers to; anything else in Host is a browser talking to another site's name.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _hostname(value: str) -> str:
    """`example.org:8080` → `example.org`; `[::1]:8080` → `::1`; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    """Answer only requests addressed to an allowed name, and refuse other sites' requests.

    A web page elsewhere can point its own DNS name at 127.0.0.1 (DNS rebinding) and then read this server
    as same-origin: the Host header still carries the page's name, so a foreign Host gets 400. A page
    elsewhere can also POST an upload here (a "simple" cross-site request needs no CORS preflight): a
    foreign Origin gets 403, as does a state-changing request the browser marks cross-site.
    `"*"` in `allowed` turns the Host check off (behind a proxy that checks it).
    """

    def __init__(self, app, allowed: tuple[str, ...] = ()):
        self.app = app
        self.any_host = "*" in allowed
        self.allowed = {h.lower() for h in (*LOOPBACK_HOSTS, *allowed) if h != "*"}

    async def __call__(self, scope, receive, send):
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal:
            status, message = refusal
            await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> tuple[int, str] | None:
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers", ())}
        host = headers.get(b"host")
        if host is not None and not self.any_host and _hostname(host) not in self.allowed:
            return 400, ("this server does not answer to that host name; add it to MEDVEC_ALLOWED_HOSTS "
                         "if it is really this server's")
        origin = headers.get(b"origin")
        if origin is not None and not self._same_site_origin(origin, host):
            return 403, "requests from other web sites are refused"
        if scope.get("method") in _UNSAFE_METHODS and headers.get(b"sec-fetch-site") == "cross-site":
            return 403, "requests from other web sites are refused"
        return None

    def _same_site_origin(self, origin: str, host: str | None) -> bool:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest:  # "null" (sandboxed frames, file://) included
            return False
        origin_host = rest.split("/", 1)[0]
        if host is not None and origin_host.lower() == host.strip().lower():
            return self.any_host or _hostname(host) in self.allowed
        return _hostname(origin_host) in self.allowed
