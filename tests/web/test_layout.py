"""The page for everyone: keyboard only, a phone-sized window, labelled controls, and a
strict Content-Security-Policy on the page alone."""

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.web.support import household

pytestmark = pytest.mark.e2e

UNLABELLED = """() => {
    const visible = (el) => el.offsetParent !== null;
    const inputs = [...document.querySelectorAll("input")].filter(visible)
        .filter((input) => input.labels.length === 0 && !input.getAttribute("aria-label"));
    const buttons = [...document.querySelectorAll("button")].filter(visible)
        .filter((button) => !button.textContent.trim() && !button.getAttribute("aria-label"));
    return [...inputs, ...buttons].map((el) => el.outerHTML);
}"""


def test_a_phone_sized_window_works_from_the_keyboard_alone(open_page, web_server):
    home = household(web_server)
    companion = open_page(width=360, height=740)
    page = companion.page

    # Skip link, then the username: the form in reading order.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(home.account.username)
    page.keyboard.press("Tab")
    page.keyboard.type(home.account.password)
    page.keyboard.press("Tab")
    expect(page.locator("#device-name")).to_be_focused()
    page.keyboard.press("Enter")
    companion.expect_online()
    assert page.evaluate(UNLABELLED) == []

    ring = home.ring(caller_name="Ada Lovelace")
    card = companion.incoming(ring.id)
    expect(card).to_be_in_viewport()
    # From the page's main region, the next stop is the call's Answer button.
    page.keyboard.press("Tab")
    answer = card.get_by_role("button", name="Answer")
    expect(answer).to_be_focused()
    assert answer.evaluate("el => getComputedStyle(el).outlineStyle") != "none", "focus is visible"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.evaluate(UNLABELLED) == []
    companion.shot("narrow-incoming")

    page.keyboard.press("Enter")
    expect(card).to_contain_text("Answered here")
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    home.caller_hangs_up(ring)
    home.wait_state(ring.id, "completed")

    history = page.locator(f'.history-item[data-call-id="{ring.id}"]')
    expect(history).to_contain_text("Completed")
    toggle = history.get_by_role("button")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(history.locator(".tl-item").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360, "nothing sticks out sideways"
    history.scroll_into_view_if_needed()
    companion.shot("narrow-history")


def test_the_page_has_a_strict_content_security_policy_and_the_api_still_describes_itself(web_server):
    page = httpx.get(web_server.base_url + "/", trust_env=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    html = page.text
    assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), "no inline script"
    assert "<style" not in html and " style=" not in html, "no inline style"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing from another origin"

    for asset in ("app.js", "companion.css", "qr.js", "socket.js"):
        served = httpx.get(f"{web_server.base_url}/static/callpull/web/{asset}", trust_env=False)
        assert served.status_code == 200, asset

    described = httpx.get(web_server.base_url + "/api/v1/", trust_env=False)
    assert described.json()["api"] == "/api/v1/" and described.json()["websocket"] == "/ws/v1/"
    assert "content-security-policy" not in described.headers, "the policy is the page's alone"
