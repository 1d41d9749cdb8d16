"""Fixtures for the browser tests: the web companion in Debian's Chromium, driven by
Playwright, against a real server started by the end-to-end harness.

- `web_server` (package): one server with the harness's ring settings (the embedded
  simulator on the server's own port, a fast sweeper, FCM pointed at the fake) and a
  two-second WebSocket heartbeat, so the page's pings are seen within a test.
- `browser` (package): /usr/bin/chromium (or CALLPULL_CHROMIUM), never a downloaded
  browser. Playwright gives every launch a fresh, empty profile directory. Its media
  devices are fake and allowed without a prompt; the microphone plays a steady tone
  (`fake_microphone`, a WAV written for the session), so the caller's side hears sound
  in every 20 ms frame and a gap in it means the audio path stopped.
- `open_page` (function): `open_page(width=…, height=…)` opens the companion in a
  new context (its own localStorage). Console errors and uncaught exceptions fail
  the test (a Content-Security-Policy violation is a console error); the page's last
  state is saved as test-output/web/<test>.png.

The harness's fixtures and failure report (server logs on failure) are tests/e2e/fixtures.py's,
loaded for the session by tests/conftest.py, so both suites start servers the same way and share
the session's template database and Redis claim.
"""

from __future__ import annotations

import math
import os
import re
import struct
import wave

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import _fresh_cache  # noqa: F401  (the e2e override of the unit suite's cache.clear())
from tests.e2e.support import Servers
from tests.web.support import SCREENSHOTS, CompanionPage

CHROMIUM = os.environ.get("CALLPULL_CHROMIUM", "/usr/bin/chromium")

# How long an expectation waits for the page (Playwright's default is 5 s). Answering or moving a
# call here first sets up the tab's audio with the simulator (WebRTC offer and answer): over 5 s was
# seen under CI's second pass, with PostgreSQL, Redis and the server on the same two cores.
expect.set_options(timeout=10_000)

# Chromium as the machine notes prescribe: no sandbox (root), nothing that phones home.
# Audio may start without a click, so the ring can be observed in a headless run.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
]

# Console noise that is not a fault of the page: the network log line Chromium prints
# for every non-2xx answer (the tests provoke 401s and 409s on purpose).
_EXPECTED_CONSOLE = re.compile(r"^Failed to load resource: the server responded with a status of (4\d\d)")


# Package scope: stopped once tests/web are done (CI's second pass runs them first), not left
# polling its database every SWEEP_INTERVAL_SECONDS for the rest of the session.
@pytest.fixture(scope="package")
def web_server(environment, ring_settings):
    owner = Servers(environment, "web")
    try:
        yield owner.start(name="web", PRESENCE_HEARTBEAT_SECONDS=2, **ring_settings)
    finally:
        owner.close()


@pytest.fixture(scope="session")
def fake_microphone(tmp_path_factory):
    """A 2 s, 440 Hz tone at half scale (48 kHz mono), which Chromium's fake microphone loops."""
    path = tmp_path_factory.mktemp("media") / "microphone.wav"
    rate = 48000
    samples = b"".join(struct.pack("<h", int(16000 * math.sin(2 * math.pi * 440 * n / rate))) for n in range(2 * rate))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return path


# Package scope: Playwright's sync API keeps an event loop running in this thread while the
# browser is open, and tests run after tests/web (tests/simulator) call asyncio.run().
@pytest.fixture(scope="package")
def browser(fake_microphone):
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"No Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                    "(or: apt-get install chromium). Browser downloads are not used.", pytrace=False)
    with sync_playwright() as playwright:
        media = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_microphone}"]
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS + media)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser, web_server, request):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    opened: list[CompanionPage] = []

    def open_(width: int = 1100, height: int = 900) -> CompanionPage:
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=web_server.base_url)
        context.set_default_timeout(8000)
        page = context.new_page()
        companion = CompanionPage(page=page, server=web_server)
        page.on("console", lambda message: message.type == "error" and not _EXPECTED_CONSOLE.match(message.text)
                and companion.errors.append(f"console: {message.text}"))
        page.on("pageerror", lambda error: companion.errors.append(f"uncaught: {error}"))
        page.goto("/")
        opened.append(companion)
        return companion

    yield open_

    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    try:
        for index, companion in enumerate(opened):
            suffix = "" if index == 0 else f"-{index + 1}"
            if not companion.page.is_closed():
                companion.page.screenshot(path=str(SCREENSHOTS / f"{name}{suffix}.png"), full_page=True)
        errors = [error for companion in opened for error in companion.errors]
        assert not errors, "the page reported errors:\n" + "\n".join(errors)
    finally:
        for companion in opened:
            companion.page.context.close()
