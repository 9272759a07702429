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
