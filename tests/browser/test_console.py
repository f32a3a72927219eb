"""The web console in a real browser against a live server: a streamed chat (and stopping one), an image
generated with live progress, the docs rendered offline, accessibility basics (axe-core), and key
creation and revocation. The key tests run last: once a key exists the server stays keyed."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import ADMIN_KEY, has_diffusers, shot

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=30_000)  # a busy CI machine: waits for a condition, never a threshold
AXE = Path(__file__).parent / "data" / "axe.min.js"


def test_root_redirects_to_the_console(page: Any, server: str) -> None:
    page.goto("/")
    assert page.url == f"{server}/console/"
    expect(page.locator("#server-status")).to_contain_text("Server ready")
    expect(page.locator("#chat-model option")).to_have_text(["fake-chat", "fake-slow"])


def test_streamed_chat(page: Any) -> None:
    page.goto("/console/#playground")
    page.select_option("#chat-model", "fake-chat")
    page.fill("#system-prompt", "Answer in one sentence.")
    page.fill("#message", "What is the capital of France?")
    page.press("#message", "Enter")
    answer = page.locator(".msg.assistant .body").last
    expect(answer).to_have_text("Paris is the capital of France, on the Seine.", timeout=20_000)
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0)
    expect(page.locator("#ro-tokens")).to_have_text(re.compile(r"^\d+ → 9$"))
    expect(page.locator("#ro-latency")).to_have_text(re.compile(r"\d+(\.\d+)? (ms|s)$"))
    expect(page.locator("#ro-ttft")).to_have_text(re.compile(r"\d+(\.\d+)? (ms|s)$"))
    expect(page.locator("#ro-cache")).to_have_text(re.compile("^(miss|bypass)$"))
    shot(page, "console-playground")
    # the conversation goes on: the second request carries the first exchange
    page.fill("#message", "And of Italy?")
    page.click("#send")
    expect(page.locator(".msg.assistant .body")).to_have_count(2)
    expect(page.locator(".msg.user")).to_have_count(2)


def test_stop_ends_a_stream(page: Any) -> None:
    page.goto("/console/#playground")
    page.select_option("#chat-model", "fake-slow")
    page.fill("#message", "Talk for a long time.")
    page.press("#message", "Enter")
    answer = page.locator(".msg.assistant .body").last
    expect(answer).to_contain_text("word3", timeout=20_000)
    page.click("#stop")
    expect(answer).to_contain_text("(stopped)")
    expect(page.locator("#stop")).to_be_hidden()
    assert "word399" not in answer.inner_text()
    expect(page.locator("#send")).to_be_enabled()


@pytest.mark.skipif(not has_diffusers(), reason="tiny-sd needs diffusers")
def test_image_generated_with_progress(page: Any) -> None:
    page.goto("/console/#images")
    page.evaluate("""() => {  // every status line the page shows, in order
        window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelector('#job-status').textContent))
            .observe(document.querySelector('#job-status'), {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("#image-prompt", "a lighthouse at dusk")
    page.fill("#image-size", "64x64")
    page.fill("#image-steps", "4")
    page.fill("#image-seed", "7")
    page.click("#generate")
    image = page.locator("#gallery figure img").first
    expect(image).to_be_visible(timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("Succeeded")
    assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 64
    seen = page.evaluate("window.seen")
    assert any(re.match(r"^(Queued · position \d+|Step \d+ of 4)$", s) for s in seen), seen
    assert page.evaluate("document.querySelector('#job-progress').value") == 1
    shot(page, "console-images")


def test_docs_render_offline_without_a_key(page: Any) -> None:
    """Every request other than the server's own is refused (the `page` fixture): the pages still render."""
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("llmops", timeout=20_000)
    expect(page.locator(".opblock-summary-path", has_text="/v1/chat/completions").first).to_be_visible()
    shot(page, "docs-swagger")
    page.goto("/redoc")
    expect(page.locator("h1", has_text="llmops").first).to_be_visible(timeout=20_000)
    shot(page, "docs-redoc")


def test_model_states_and_queues(page: Any) -> None:
    page.goto("/console/#models")
    card = page.locator("#models-body .card", has_text="fake-slow")
    expect(card).to_contain_text("ready")
    expect(card).to_contain_text("Queued")
    if has_diffusers():
        expect(page.locator("#models-body .card", has_text="tiny-sd")).to_contain_text("image")
    shot(page, "console-models")


@pytest.mark.parametrize("view", ["playground", "images", "usage", "keys", "spend", "models"])
def test_accessibility(page: Any, view: str) -> None:
    """axe-core's WCAG 2 A/AA rules (labels, names, contrast, landmarks) on each view, with no violation."""
    page.goto(f"/console/#{view}")
    expect(page.locator(f"#view-{view}")).to_be_visible()
    page.wait_for_load_state("networkidle")
    page.evaluate(AXE.read_text())  # not a <script> tag: the console's CSP refuses inline scripts
    result = page.evaluate("""async () => await axe.run(document, {
        runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})""")
    violations = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]]
    assert violations == []


def test_keyboard_reaches_every_control_of_the_playground(page: Any) -> None:
    page.goto("/console/#playground")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    reached: set[str] = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    assert {"chat-model", "system-prompt", "temperature", "max-tokens", "message", "send"} <= reached
    page.focus("#message")
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user").last).to_have_text(re.compile("typed with the keyboard"))


def wait_until_keyed(server: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{server}/v1/models").status_code != 401:
        assert time.monotonic() < deadline, "the server did not become keyed"
        time.sleep(0.05)


def test_keys_create_show_once_and_revoke(page: Any, server: str) -> None:
    page.goto("/console/#keys")
    expect(page.locator("#keys-table tbody")).to_contain_text("admin key")
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#keys-table tbody")).to_contain_text("No keys yet")
    assert page.evaluate("sessionStorage.getItem('llmops.adminKey')") == ADMIN_KEY
    page.fill("#key-name", "browser-team")
    page.fill("#key-rpm", "60")
    page.fill("#key-budget", "5")
    page.click("#create-key button[type=submit]")
    expect(page.locator("#new-secret")).to_be_visible()
    secret = page.locator("#secret-value").inner_text()
    row = page.locator("#keys-table tbody tr", has_text="browser-team")
    expect(row).to_contain_text("60 rpm")
    expect(row).to_contain_text("active")
    assert secret not in page.locator("#keys-table").inner_text()
    shot(page, "console-keys")
    page.click("#dismiss-secret")
    expect(page.locator("#new-secret")).to_be_hidden()
    assert page.locator("#secret-value").inner_text() == ""

    wait_until_keyed(server)  # the server rechecks whether it has keys once a second
    assert httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    # the new key's usage page, with the key entered in the console
    page.fill("#api-key", secret)
    page.click("#key-form button[type=submit]")
    page.goto("/console/#usage")
    expect(page.locator("#usage-body")).to_contain_text("browser-team")
    expect(page.locator("#usage-body")).to_contain_text("$5.00 per month")
    shot(page, "console-usage")

    page.goto("/console/#keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Revoke browser-team']")
    expect(page.locator("#keys-table tbody tr", has_text="browser-team")).to_contain_text("revoked")
    assert httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_spend_by_key_and_model(page: Any) -> None:
    page.goto("/console/#spend")
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#spend-body")).to_contain_text("Total")
    expect(page.locator("#spend-body table, #spend-body .muted").first).to_be_visible()
