"""The Django admin in Chromium at 1280 px: every changelist fits the window.

A superuser is created in the server's database with `manage.py createsuperuser`, and the
household behind the lists is made through the API as the apps would: a user with a
150-character username, devices of every kind with 100-character names (one of them
revoked, one with a live WebSocket), a call, a line with forwarding on, account settings.
Each changelist (devices, connections, calls, lines, server numbers, account settings,
users) is opened signed in and must neither scroll sideways
(document.documentElement.scrollWidth <= clientWidth) nor hide columns in the admin's own
sideways-scrolling box around the table; the page is saved as
test-output/web/admin-<model>.png.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from playwright.sync_api import expect

from tests.e2e.support import PASSWORD, ROOT, Account, call, hello, sign_up, ws_connect
from tests.web.support import SCREENSHOTS, household, ok

pytestmark = pytest.mark.e2e

WIDTH = 1280
CHANGELISTS = ["devices/device", "devices/deviceconnection", "callpull/call", "callpull/line",
               "callpull/servernumber", "callpull/accountsettings", "auth/user"]

RESULTS_OVERFLOW = """() => [...document.querySelectorAll("#changelist .results, #result_list")]
    .filter((box) => box.scrollWidth > box.clientWidth)
    .map((box) => `${box.id || box.className}: ${box.scrollWidth} px in ${box.clientWidth} px`)"""


def long_username() -> str:
    """150 characters, the most Django's username takes, with no break opportunity."""
    head = "a.very.long.username." + uuid.uuid4().hex[:8] + "."
    return head + "x" * (150 - len(head))


def create_superuser(server) -> tuple[str, str]:
    username = "root-" + uuid.uuid4().hex[:8]
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--no-input", "--username", username,
         "--email", f"{username}@example.test"],
        cwd=ROOT, env={**server.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}, check=True,
        capture_output=True, timeout=60)
    return username, PASSWORD


@pytest.fixture(scope="module")
def admin_context(browser, web_server):
    """A browser context signed in to the admin at 1280 px, with long values in every list."""
    # A household with a call, a line and account settings; then a user whose names are long.
    home = household(web_server)
    ring = home.ring(caller_name="Ada Lovelace with a rather long caller name from the carrier")
    home.handset_rejects(ring)
    home.set_account(pull_requires_approval=True)
    wide = Account(server=web_server, username=long_username())
    ok(call(web_server, "POST", "/api/v1/accounts", json={"username": wide.username, "password": PASSWORD}), 201)
    devices = []
    for kind, platform in [("handset", "android"), ("tablet", "android"), ("desktop", "other"), ("web", "web")]:
        name = f"{kind.title()} with a very long name that goes on and on " + "W" * 60
        devices.append(wide.register(kind, name=name[:100], platform=platform))
    removed = wide.register("tablet", name="Tablet that was removed " + "R" * 76)
    ok(call(web_server, "DELETE", f"/api/v1/devices/{removed.id}", token=removed.token), 204)
    sign_up(web_server, "admin-extra")

    username, password = create_superuser(web_server)
    context = browser.new_context(viewport={"width": WIDTH, "height": 900}, base_url=web_server.base_url)
    context.set_default_timeout(8000)
    page = context.new_page()
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    page.close()
    # A live socket of a long-named device, for the connections list.
    with ws_connect(web_server, devices[1].token) as socket:
        hello(socket)
        try:
            yield context
        finally:
            context.close()


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_the_admin_changelist_fits_1280_px(admin_context, changelist):
    page = admin_context.new_page()
    try:
        response = page.goto(f"/admin/{changelist}/")
        assert response is not None and response.status == 200, f"/admin/{changelist}/: {response and response.status}"
        expect(page.locator("#result_list, .paginator").first).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"admin-{changelist.replace('/', '-')}.png"), full_page=True)
        scroll_width, client_width = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll_width <= client_width, (
            f"/admin/{changelist}/ is {scroll_width} px wide in a {client_width} px window")
        # The admin wraps the table in a box that scrolls on its own (.results, overflow-x: auto):
        # the page stays 1280 px while columns hide to the right. That box must not scroll either.
        hidden = page.evaluate(RESULTS_OVERFLOW)
        assert hidden == [], f"/admin/{changelist}/: the list scrolls sideways inside the page: {hidden}"
    finally:
        page.close()


def test_the_device_list_cuts_long_values_and_marks_removed_devices(admin_context):
    page = admin_context.new_page()
    try:
        page.goto("/admin/devices/device/?removed=yes")
        rows = page.locator("#result_list tbody tr")
        expect(rows).to_have_count(1)
        name = rows.locator(".field-short_name")
        expect(name).to_contain_text("(removed)")
        # Cut to 40 characters with an ellipsis; the whole name in the tooltip.
        full = name.locator("span[title]").get_attribute("title")
        assert full is not None and full.startswith("Tablet that was removed") and len(full) == 100, full
        assert len(name.locator("span[title]").inner_text()) == 40
        owner = rows.locator(".field-owner span[title]")
        assert len(owner.get_attribute("title")) == 150 and len(owner.inner_text()) == 24
        page.goto("/admin/devices/device/?removed=no")
        expect(page.locator("#result_list tbody tr")).to_have_count(5)
        expect(page.locator("#result_list")).not_to_contain_text("(removed)")
    finally:
        page.close()
