"""The API docs under their Content-Security-Policy, in a real browser: Swagger UI (/docs) and ReDoc (/redoc)
render the schema from this server's own assets with no violation reported and no script error (ReDoc's one:
the Redocly logo its footer asks cdn.redoc.ly for, refused as an offline page must), while an injected
inline script does not run and neither page may be framed."""

from __future__ import annotations

from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=30_000)


@pytest.fixture
def console_messages(page: Any) -> list[str]:
    """Every error or warning the browser's console reports (a CSP refusal is one), as it happens."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    return seen


def security_headers(response: Any) -> dict[str, str]:
    assert response is not None
    assert response.status == 200
    headers: dict[str, str] = response.headers
    assert (headers["x-frame-options"], headers["x-content-type-options"], headers["referrer-policy"]) == (
        "DENY", "nosniff", "no-referrer")
    directives = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "'unsafe-eval'" not in directives["script-src"]
    assert (directives["default-src"], directives["frame-ancestors"]) == ("'none'", "'none'")
    return directives


def test_swagger_ui_renders_under_its_policy(page: Any, console_messages: list[str]) -> None:
    policy = security_headers(page.goto("/docs"))
    assert "'sha256-" in policy["script-src"]  # its start-up script, by hash
    assert "'unsafe-inline'" not in policy["style-src"]
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("llmops")
    operation = page.locator("#operations-default-chat_completions_v1_chat_completions_post, "
                             ".opblock-summary-path[data-path='/v1/chat/completions']").first
    expect(operation).to_be_visible()
    assert page.evaluate("getComputedStyle(document.querySelector('.swagger-ui .opblock')).borderStyle") != ""
    page.locator(".opblock-summary-path[data-path='/v1/models']").first.click()  # expand an operation
    expect(page.locator(".opblock-body").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert console_messages == []


def test_redoc_renders_under_its_policy(page: Any, console_messages: list[str]) -> None:
    policy = security_headers(page.goto("/redoc"))
    assert policy["script-src"] == "'self'"  # no inline script at all
    expect(page.locator("h1").first).to_contain_text("llmops")
    expect(page.get_by_text("/v1/chat/completions").first).to_be_attached()
    # ReDoc's own styles (written into the page as it renders) apply: its menu is laid out beside the content
    assert page.evaluate("getComputedStyle(document.querySelector('.menu-content')).position") in ("sticky", "fixed")
    page.wait_for_load_state("networkidle")
    logo = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates"
    assert [m for m in console_messages if logo not in m] == []


def script_refused(message: Any) -> bool:
    return "Content Security Policy" in message.text and "script-src" in message.text


def test_an_injected_inline_script_does_not_run_on_the_docs(page: Any) -> None:
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("llmops")
    with page.expect_console_message(script_refused):  # waits for the refusal itself, not a fixed time
        page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.injected = true'; document.body.append(s); }""")
    assert page.evaluate("window.injected === undefined")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_cannot_be_framed(page: Any, server: str, path: str) -> None:
    page.route("**/framer.html", lambda route: route.fulfill(
        content_type="text/html", body=f'<iframe id="f" src="{server}{path}"></iframe>'))
    with page.expect_console_message(lambda m: "frame-ancestors" in m.text):  # the refusal, as it happens
        page.goto(f"{server}/framer.html")
    assert page.frame_locator("#f").locator(".swagger-ui, redoc, .menu-content").count() == 0  # nothing rendered
