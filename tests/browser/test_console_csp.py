"""The console under its own Content-Security-Policy, in a real browser: every view works with no violation
reported (its script, style sheet, icon, API calls, generated images and the inline widths app.js sets are
all allowed), while an injected inline script does not run and the page may not be framed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import ADMIN_KEY, has_diffusers

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=30_000)


@pytest.fixture
def violations(page: Any) -> list[str]:
    """What the browser reports refusing under the page's CSP, as it happens."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def test_every_view_works_under_the_policy(page: Any, server: str, violations: list[str]) -> None:
    response = page.goto("/console/")
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["x-content-type-options"], headers["referrer-policy"]) == (
        "DENY", "nosniff", "no-referrer")
    expect(page.locator("#server-status")).to_contain_text("Server ready")
    assert page.evaluate("getComputedStyle(document.body).fontFamily") != ""  # style.css applied

    page.select_option("#chat-model", "fake-chat")
    page.fill("#message", "What is the capital of France?")
    page.press("#message", "Enter")
    expect(page.locator(".msg.assistant .body").last).to_contain_text("Paris", timeout=20_000)

    if has_diffusers():
        page.goto("/console/#images")
        page.fill("#image-prompt", "a lighthouse")
        page.fill("#image-size", "64x64")
        page.fill("#image-steps", "2")
        page.click("#generate")
        image = page.locator("#gallery figure img").first
        expect(image).to_be_visible(timeout=60_000)  # a data: URL
        assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 64

    page.fill("#admin-key", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    for view in ("usage", "keys", "spend", "models"):
        page.goto(f"/console/#{view}")
        expect(page.locator(f"#view-{view}")).to_be_visible()
        page.wait_for_load_state("networkidle")
    # app.js sets bar widths with a style attribute (its el() helper): the policy lets those through
    width = page.evaluate("""() => { const s = document.createElement('span');
        s.setAttribute('style', 'display:block;width:37px'); document.body.append(s);
        return getComputedStyle(s).width; }""")
    assert width == "37px"
    assert violations == []


def test_an_injected_inline_script_does_not_run(page: Any, violations: list[str]) -> None:
    page.goto("/console/")
    expect(page.locator("#server-status")).to_contain_text("Server ready")
    page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.injected = true'; document.body.append(s);
        const img = document.createElement('img'); img.setAttribute('onerror', 'window.injected = true');
        img.src = 'data:,'; document.body.append(img); }""")
    page.wait_for_timeout(200)
    assert page.evaluate("window.injected === undefined")
    assert any("script-src" in v for v in violations), violations


def test_the_console_cannot_be_framed(page: Any, server: str, violations: list[str]) -> None:
    page.route("**/framer.html", lambda route: route.fulfill(
        content_type="text/html", body=f'<iframe id="f" src="{server}/console/"></iframe>'))
    page.goto(f"{server}/framer.html")
    page.wait_for_timeout(500)
    frame = page.frame_locator("#f")
    assert frame.locator("#server-status").count() == 0  # blocked: nothing of the console rendered
    assert any("frame-ancestors" in v for v in violations), violations
    assert httpx.get(f"{server}/console", follow_redirects=False).headers["location"] == "console/"
