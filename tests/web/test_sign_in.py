"""Signing the browser in and out: it becomes a `web` device that can take calls."""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.support import call, sign_up
from tests.web.support import household, ok

pytestmark = pytest.mark.e2e


def test_a_wrong_password_shows_the_servers_message_and_registers_nothing(open_page, web_server):
    account = sign_up(web_server, "web")
    companion = open_page()
    page = companion.page

    companion.sign_in(account, password="not my password")

    error = page.locator("#password-error")
    expect(error).to_be_visible()
    # The envelope's message, as the API wrote it.
    expected = call(web_server, "POST", "/api/v1/devices", json={
        "username": account.username, "password": "still wrong",
        "device": {"name": "probe", "kind": "web", "platform": "web"}}).json()["error"]["message"]
    expect(error).to_have_text(expected)
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("() => localStorage.getItem('callpull.session')") is None
    companion.shot("sign-in-wrong-password")


def test_signing_in_registers_this_tab_as_a_web_device_that_stays_signed_in_and_signing_out_deletes_it(
        open_page, web_server):
    home = household(web_server)
    companion = open_page()
    page = companion.page
    expect(page.get_by_role("heading", name="Take your calls in this browser")).to_be_visible()

    companion.sign_in(home.account, name="Work laptop")
    companion.expect_online()
    stored = companion.session()
    assert stored["token"] and stored["device"]["name"] == "Work laptop"

    # The server knows it as a web device the provider can reach, online over its socket.
    device = home.devices()[stored["device"]["id"]]
    assert (device["kind"], device["platform"], device["online"]) == ("web", "web", True), device
    assert re.fullmatch(r"d[0-9a-f]{32}", device["voice_identity"]), device
    assert (device["connect"]["type"], device["connect"]["address"]) == ("client", device["voice_identity"]), device

    # The devices panel lists it as this browser, and the handset with it.
    mine = companion.device_row(device["id"])
    expect(mine).to_contain_text("Work laptop")
    expect(mine).to_contain_text("This browser")
    expect(companion.device_row(home.handset.id)).to_contain_text("Pixel 9")
    expect(page.locator("#me-name")).to_have_text("Work laptop")
    # The lines panel: the number, where it forwards, the codes to dial, the policy.
    line = page.locator(f'.line[data-line-id="{home.line["id"]}"]')
    expect(line).to_contain_text("Active")
    expect(line).to_contain_text(home.line["mmi"]["register"])
    expect(line).to_contain_text("*#67#")
    expect(line).to_contain_text("##67#")
    expect(line).to_contain_text("On answer")
    companion.shot("signed-in")

    # A reload keeps the token (localStorage) and reconnects.
    page.reload()
    companion.expect_online()
    assert companion.session()["token"] == stored["token"]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Take your calls in this browser")).to_be_visible()
    expect(page.locator("#signin-reason")).to_contain_text("You signed out")
    assert page.evaluate("() => localStorage.getItem('callpull.session')") is None
    assert stored["device"]["id"] not in home.devices()
    revoked = call(web_server, "GET", "/api/v1/devices", token=stored["token"])
    assert revoked.status_code == 401
    ok(call(web_server, "GET", "/api/v1/devices", token=home.handset.token))
