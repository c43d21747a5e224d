"""Swagger UI at ``/docs`` and ReDoc at ``/redoc``, from files the app serves itself, never from a CDN: the
REST docs work offline, as GraphiQL and the dashboard do.

The files are the npm packages' own (``swagger-ui-dist``, ``redoc`` 2, the major version FastAPI's page
is written for), unmodified, with their licences in ``static/vendor/`` (versions, checksums and how to
update them: ``static/vendor/README.md``). The pages are FastAPI's own, pointed at those files; ReDoc's
Google Fonts link is left out (it falls back to the browser's fonts), the favicon is the dashboard's.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

__all__ = ["ASSETS", "add_docs"]

SWAGGER_JS = "/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "/vendor/swagger-ui/swagger-ui.css"
REDOC_JS = "/vendor/redoc/redoc.standalone.js"
FAVICON = "/favicon.svg"
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS)


def add_docs(app: FastAPI) -> None:
    """Add ``/docs`` and ``/redoc`` to ``app``, which must be built with ``docs_url=None, redoc_url=None``."""
    assert app.docs_url is None and app.redoc_url is None and app.openapi_url is not None
    openapi_url = app.openapi_url

    def root(request: Request) -> str:
        prefix: str = request.scope.get("root_path", "")
        return prefix.rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=base + SWAGGER_JS,
            swagger_css_url=base + SWAGGER_CSS,
            swagger_favicon_url=base + FAVICON,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=base + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=base + REDOC_JS,
            redoc_favicon_url=base + FAVICON,
            with_google_fonts=False,
        )
