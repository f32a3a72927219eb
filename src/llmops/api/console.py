"""What a browser gets: the web console (static files shipped in `llmops/console`, at /console, with /
redirecting there), the API docs at /docs and /redoc with their assets served from the installed
`fastapi-offline` package (no CDN), and CORS for the origins `web.cors_origins` allows.

None of these pages needs a key (which paths they are is `http_edge.browser_page`'s): the console asks for
one and keeps it in the browser's session storage, and the docs show the OpenAPI schema only. Everything
the console does goes through the public API.

Every console response carries `CONSOLE_SECURITY_HEADERS`: a Content-Security-Policy that lets the page run
its own script and style sheet only (no inline script, no other origin; `fetch` to this server only), and
forbids framing it, sniffing types and sending a Referer. The redirects to the console are relative, so they
never name a host taken from the request's Host header.

The docs pages carry the same headers with a policy of their own (`docs_csp`): Swagger UI and ReDoc run
from this server's assets only, Swagger UI's inline start-up script allowed by its hash and no other inline
script; ReDoc's page may use inline styles (its bundle writes style elements as it loads, before anything
could hand it a nonce). /openapi.json and the docs' assets get the strictest policy (they are no pages).
ReDoc's footer asks cdn.redoc.ly for the Redocly logo: the policy refuses it, as an offline page should."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmops.http_edge import CONSOLE, DOCS_ASSETS
from llmops.settings import WebSettings

CORS_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "X-Admin-Key", "X-Request-Id", "X-Priority",
                "X-Request-Timeout", "Cache-Control"]
CORS_EXPOSED = ["X-Request-Id", "X-Cache", "X-Queue-Position", "X-Queue-Time-Ms", "Retry-After",
                "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                *(f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                  for what in ("limit", "remaining", "reset"))]


# What the console (index.html, app.js, style.css, favicon.svg) needs and nothing more: its own script and
# style sheet; inline style attributes only (app.js sets the width of the spend bars with `style`; no inline
# <style> or <script>); images from this server and the data: URLs of generated images; API calls to this
# server. Forms are submitted by app.js (`preventDefault`), never by the browser.
CONSOLE_CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "style-src-attr 'unsafe-inline'",
    "img-src 'self' data:", "connect-src 'self'", "base-uri 'none'", "form-action 'none'",
    "frame-ancestors 'none'"))
CONSOLE_SECURITY_HEADERS = {"Content-Security-Policy": CONSOLE_CSP, "X-Frame-Options": "DENY",
                            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# What is no page (the schema, the docs' scripts and styles): nothing may run or load in its name.
NO_PAGE_HEADERS = {**CONSOLE_SECURITY_HEADERS, "Content-Security-Policy": "default-src 'none'; "
                   "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"}
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)  # an inline script or style sheet, no attributes


def docs_csp(page: bytes, inline_styles: bool = False) -> str:
    """The policy for a docs page: this server's scripts and the page's own inline scripts by their hashes
    (Swagger UI's start-up script), no other; this server's style sheets and the page's inline ones by their
    hashes, or with `inline_styles` any inline style (ReDoc writes its styles into the page as it loads,
    before any option could give them a nonce: styles cannot run code). Swagger UI's "Try it out" calls the
    API from the page (connect-src); ReDoc searches in a worker it makes from a blob: URL."""
    hashes: dict[bytes, str] = {b"script": "", b"style": ""}
    for tag, body in _INLINE.findall(page):
        hashes[tag] += f" 'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
    styles = " 'unsafe-inline'" if inline_styles else hashes[b"style"]
    return "; ".join((
        "default-src 'none'", f"script-src 'self'{hashes[b'script']}", f"style-src 'self'{styles}",
        "img-src 'self' data:", "font-src 'self' data:", "connect-src 'self'", "worker-src blob:",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"))


def docs_page(page: HTMLResponse, inline_styles: bool = False) -> HTMLResponse:
    """`page` with the security headers, its policy made for what it holds."""
    body = bytes(page.body)
    headers = {**CONSOLE_SECURITY_HEADERS, "Content-Security-Policy": docs_csp(body, inline_styles)}
    return HTMLResponse(body, headers=headers)


class SecurityHeaders:
    """`app` with `headers` (the console's by default) on every HTTP response, replacing any of the same name."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self._raw = [(k.lower().encode(), v.encode()) for k, v in (headers or CONSOLE_SECURITY_HEADERS).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self._raw}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self._raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def console_dir() -> Path:
    return Path(str(files("llmops") / "console"))


def docs_assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_console(app: FastAPI, web: WebSettings) -> None:
    """The console and the docs, as `web` enables them."""
    if web.console:
        app.mount(CONSOLE, SecurityHeaders(StaticFiles(directory=console_dir(), html=True)), name="console")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse(CONSOLE + "/", status_code=307)

        @app.get(CONSOLE, include_in_schema=False)
        async def console_slash() -> RedirectResponse:
            """/console to /console/, relative: the router's own slash redirect names the Host header's host."""
            return RedirectResponse(CONSOLE.rsplit("/", 1)[-1] + "/", status_code=307,
                                    headers=CONSOLE_SECURITY_HEADERS)

    if web.docs:
        _install_docs(app)


def _install_docs(app: FastAPI) -> None:
    app.mount(DOCS_ASSETS, SecurityHeaders(StaticFiles(directory=docs_assets_dir()), NO_PAGE_HEADERS),
              name="docs-assets")
    for route in app.router.routes:  # FastAPI's own /openapi.json (added when the app was made)
        if isinstance(route, Route) and route.path == app.openapi_url:
            route.app = SecurityHeaders(route.app, NO_PAGE_HEADERS)
    title = f"{app.title} {app.version}"

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return docs_page(get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None}))  # no badge fetched from swagger.io: offline

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return docs_page(get_redoc_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - API reference",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False), inline_styles=True)


def cors(app: ASGIApp, web: WebSettings) -> ASGIApp:
    """`app` behind CORS for the allow-listed origins only; without any, no CORS headers at all (browsers
    then refuse cross-origin calls). The app factory puts it outermost: preflights are answered before auth."""
    if not web.cors_origins:
        return app
    return CORSMiddleware(app, allow_origins=web.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                          allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, allow_credentials=False,
                          max_age=600)
