"""The HTTP API's interactive docs (/docs, Swagger UI) served from this machine, not a CDN.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from jsdelivr, so it is blank on a
hospital network or offline. The `swagger-ui-bundle-v2` package ships those files; they are mounted
under /docs-assets and the page points at them.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def add_offline_docs(app: FastAPI) -> None:
    """/docs from local assets. Create the app with `docs_url=None` so FastAPI's CDN page is not there too."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    router = APIRouter(include_in_schema=False)
    redirect = "/docs/oauth2-redirect"

    @router.get("/docs")
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} · API",
                                   oauth2_redirect_url=redirect,
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")

    @router.get(redirect)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.include_router(router)
