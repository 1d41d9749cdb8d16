"""The devices panel: live presence, rename, ring on/off, remove, and adding a device with
a pairing code shown as text and as a QR code rendered in the page."""

import pytest
from playwright.sync_api import expect

from tests.e2e.support import call, ws_connect
from tests.web.support import household, ok

pytestmark = pytest.mark.e2e


def test_the_devices_panel_follows_presence_and_renames_silences_and_removes_devices(open_page, web_server):
    home = household(web_server)
    tablet = home.tablet("Kitchen tablet")
    desktop = home.account.register("desktop", name="Old desktop", platform="other")
    companion = open_page()
    page = companion.page
    companion.join(home)

    row = companion.device_row(tablet.id)
    expect(row).to_contain_text("Last seen")
    with ws_connect(web_server, tablet.token):
        expect(row).to_have_attribute("data-online", "true")
        expect(row.locator(".presence")).to_have_text("Online")
    expect(row).to_have_attribute("data-online", "false")
    expect(row.locator(".presence")).to_have_text("Last seen just now")

    # Rename, with the keyboard.
    row.get_by_role("button", name="Rename Kitchen tablet").click()
    field = row.get_by_label("New name for Kitchen tablet")
    expect(field).to_be_focused()
    field.fill("Hall tablet")
    field.press("Enter")
    expect(row.locator(".device-name")).to_have_text("Hall tablet")
    expect(row.get_by_role("button", name="Rename Hall tablet")).to_be_focused()
    assert home.devices()[tablet.id]["name"] == "Hall tablet"

    # Ring off.
    ring = row.get_by_role("checkbox", name="Ring on Hall tablet")
    expect(ring).to_be_checked()
    ring.uncheck()
    expect(ring).not_to_be_checked()
    assert home.devices()[tablet.id]["ring_enabled"] is False

    # Remove, after a confirmation.
    old = companion.device_row(desktop.id)
    old.get_by_role("button", name="Remove Old desktop").click()
    expect(old).to_contain_text("Remove Old desktop? Its sign-in stops working at once.")
    companion.shot("devices-remove-confirm")
    old.get_by_role("button", name="Remove", exact=True).click()
    expect(old).to_have_count(0)
    assert desktop.id not in home.devices()
    assert call(web_server, "GET", "/api/v1/devices", token=desktop.token).status_code == 401

    # A device removed elsewhere leaves the list at once, and the page says which device removed
    # it (account.changed: a removal made with a stolen token does not go unseen).
    ok(call(web_server, "DELETE", f"/api/v1/devices/{tablet.id}", token=home.handset.token), 204)
    expect(row).to_have_count(0)
    expect(page.locator(".notice-info")).to_contain_text("Account changed (device revoked) by Pixel")

    # An error from the API is shown with the envelope's message: the account made all the
    # pairing codes it may make this hour (RATE_LIMIT_PAIRING_CODE) from the handset.
    for _ in range(50):
        refused = call(web_server, "POST", "/api/v1/pairing-codes", token=home.handset.token)
        if refused.status_code != 201:
            break
    assert refused.status_code == 429, refused.text
    page.get_by_role("button", name="Add a device").click()
    expect(page.locator(".notice-error")).to_contain_text(
        f"Could not make a pairing code: {refused.json()['error']['message']}")
    companion.shot("devices-error")


def test_adding_a_device_shows_a_single_use_pairing_code_and_its_qr_code(open_page, web_server):
    import zxingcpp

    home = household(web_server)
    companion = open_page()
    page = companion.page
    companion.join(home)

    page.get_by_role("button", name="Add a device").click()
    pairing = page.locator("#pairing")
    code = pairing.locator(".pairing-code").get_attribute("data-code")
    assert code and len(code) == 8, code
    expect(pairing.locator(".pairing-code")).to_have_text(f"{code[:4]}-{code[4:]}")
    expect(pairing).to_contain_text("Expires in")

    # The QR code, read back from the canvas's pixels by a real decoder.
    canvas = pairing.get_by_role("img", name=f"QR code of the pairing code {code}")
    width, height, gray = canvas.evaluate("""canvas => {
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const gray = [];
        for (let i = 0; i < data.length; i += 4) gray.push(data[i]);
        return [canvas.width, canvas.height, gray];
    }""")
    decoded = zxingcpp.read_barcodes(memoryview(bytes(gray)).cast("B", (height, width)))
    assert [(found.format, found.text) for found in decoded] == [(zxingcpp.BarcodeFormat.QRCode, code)]
    companion.shot("add-a-device")

    # Another browser joins with it; the first one sees the new device appear.
    other = open_page(width=800, height=700)
    other.pair(code, name="Living room TV")
    other.expect_online()
    new_id = other.session()["device"]["id"]
    expect(companion.device_row(new_id)).to_contain_text("Living room TV")
    expect(companion.device_row(new_id).locator(".presence")).to_have_text("Online")

    # The code works once: a third browser gets the server's refusal, as the server wrote it.
    third = open_page(width=800, height=700)
    third.pair(code, name="Someone else")
    refusal = call(web_server, "POST", "/api/v1/devices", json={
        "pairing_code": code, "device": {"name": "probe", "kind": "web", "platform": "web"}}).json()["error"]["message"]
    expect(third.page.locator("#pairing-error")).to_have_text(refusal)
    expect(third.page.get_by_label("Pairing code")).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Done").click()
    expect(pairing).to_be_hidden()
    expect(page.get_by_role("button", name="Add a device")).to_be_focused()


def test_removing_this_browser_from_another_device_signs_it_out(open_page, web_server):
    home = household(web_server)
    companion = open_page()
    me = companion.join(home)

    ok(call(web_server, "DELETE", f"/api/v1/devices/{me.id}", token=home.handset.token), 204)

    page = companion.page
    expect(page.get_by_role("heading", name="Take your calls in this browser")).to_be_visible()
    expect(page.locator("#signin-reason")).to_have_text(
        "This browser was removed from your devices. Sign in again to take calls here.")
    assert page.evaluate("() => localStorage.getItem('callpull.session')") is None
