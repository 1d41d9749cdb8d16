"""The companion's screenshots in docs/screenshots/: the ringing, live, moved and history
views at 1280 px and 390 px, taken from the same flows the other browser tests drive.

    UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/web/test_screenshots.py -p no:cacheprovider

writes docs/screenshots/{ringing,live,moved,history}-{1280,390}.png (README.md links them);
without the variable they go to test-output/web/screenshots/ only, so an ordinary run never
changes the docs. Either way each view is checked as it is taken: it shows what its name
says, nothing on it scrolls sideways and no label is cut.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.e2e.support import ROOT, call
from tests.web.support import SCREENSHOTS, household, ok
from tests.web.test_walkthrough import CUT_LABELS

pytestmark = pytest.mark.e2e

UPDATE = bool(os.environ.get("UPDATE_SCREENSHOTS"))
TARGET = ROOT / "docs" / "screenshots" if UPDATE else SCREENSHOTS / "screenshots"
# A laptop's window, and a phone's (390 x 844, an iPhone 12 to 15).
WINDOWS = {1280: 800, 390: 844}


def take(companion, view: str, width: int, subject=None) -> None:
    """Check the page as it is now and save it as <view>-<width>.png: the window, scrolled
    so that `subject` starts at its top (when given)."""
    page = companion.page
    if subject is not None:
        subject.evaluate("(el) => { el.scrollIntoView({block: 'start'}); window.scrollBy(0, -12); }")
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{view}: sideways scroll at {width} px"
    cut = page.evaluate(CUT_LABELS)
    assert cut == [], f"{view}: labels cut at {width} px: {cut}"
    TARGET.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(TARGET / f"{view}-{width}.png"))


@pytest.mark.parametrize("width", sorted(WINDOWS, reverse=True))
def test_the_companions_views_for_the_docs(open_page, web_server, width):
    home = household(web_server)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page(width=width, height=WINDOWS[width])
    page = companion.page
    companion.join(home)

    # An earlier call the caller gave up on, so the history is not a single line.
    missed = home.ring(caller="+15550107788", caller_name="Grace Hopper")
    expect(companion.incoming(missed.id).get_by_role("button", name="Answer")).to_be_visible()
    home.caller_hangs_up(missed)
    ok(call(web_server, "POST", f"/api/v1/calls/{missed.id}/handset-events", token=home.handset.token,
            json={"event": "caller_hung_up"}))
    home.wait_state(missed.id, "missed")
    expect(page.locator(f'.history-item[data-call-id="{missed.id}"] .h-state')).to_have_text("Missed")
    companion.incoming(missed.id).get_by_role("button", name="Dismiss").click()
    expect(companion.incoming(missed.id)).to_have_count(0)

    # Ringing: the incoming card with its buttons.
    ring = home.ring(caller="+15550104242", caller_name="Ada Lovelace")
    card = companion.incoming(ring.id)
    expect(card).to_contain_text("Ringing")
    expect(card.get_by_role("button", name="Answer")).to_be_visible()
    take(companion, "ringing", width)

    # Live: answered here and connected, with Hang up and Mute.
    card.get_by_role("button", name="Answer").click()
    expect(card).to_contain_text("Answered here")
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    live = companion.live(ring.id)
    expect(live).to_contain_text("Live on this browser")
    expect(live.get_by_role("button", name="Hang up")).to_be_enabled()
    expect(card).to_be_hidden()
    take(companion, "live", width)

    # Moved: the tablet takes the call; the page offers Move here.
    ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/pull", token=tablet.token), 202)
    expect(live).to_contain_text("Live on Kitchen tablet")
    expect(live).to_contain_text("The call moved to Kitchen tablet.")
    expect(live.get_by_role("button", name="Move here")).to_be_visible()
    take(companion, "moved", width)

    # History: the call ended, opened into its timeline.
    home.caller_hangs_up(ring)
    home.wait_state(ring.id, "completed")
    expect(live).to_have_count(0)
    item = page.locator(f'.history-item[data-call-id="{ring.id}"]')
    expect(item.locator(".h-state")).to_have_text("Completed")
    item.get_by_role("button").first.click()
    expect(item.locator(".tl-lane .tl-lane-name")).to_have_count(4)
    expect(item.locator(".history-detail")).to_contain_text("Kitchen tablet")
    take(companion, "history", width, page.locator("#history-title"))


def test_the_readme_shows_the_screenshots():
    readme = (ROOT / "README.md").read_text()
    for view in ("ringing", "live", "moved", "history"):
        for width in WINDOWS:
            name = f"docs/screenshots/{view}-{width}.png"
            assert name in readme, f"README.md does not link {name}"
            assert (ROOT / name).is_file(), f"{name} is missing: UPDATE_SCREENSHOTS=1 writes it"
