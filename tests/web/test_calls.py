"""Incoming calls in the browser: the card, the ring, answering here, and every way a
ring ends (answered elsewhere, declined, missed)."""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.support import call
from tests.web.support import household, ok, shown

pytestmark = pytest.mark.e2e


def test_a_ring_report_shows_the_incoming_card_and_answering_connects_the_call_here(open_page, web_server):
    home = household(web_server)
    companion = open_page()
    page = companion.page
    me = companion.join(home)

    ring = home.ring(caller_name="Ada Lovelace")

    card = companion.incoming(ring.id)
    expect(card).to_be_visible()
    expect(card.get_by_role("heading", name="Ada Lovelace")).to_be_visible()
    expect(card).to_contain_text(shown(ring.caller))
    expect(card).to_contain_text(f"line {shown(home.number)}")
    expect(page.locator("#incoming")).to_have_attribute("aria-live", "assertive")
    expect(page).to_have_title("Incoming call — callpull")

    # The ring plays (Web Audio) and can be muted; the choice shows on the button.
    html = page.locator("html")
    expect(html).to_have_attribute("data-ring", "playing")
    mute = card.get_by_role("button", name="Mute ring")
    mute.click()
    expect(html).to_have_attribute("data-ring", "muted")
    expect(mute).to_have_attribute("aria-pressed", "true")
    expect(card).to_contain_text("ring muted")
    mute.click()
    expect(html).to_have_attribute("data-ring", "playing")
    companion.shot("incoming-call")

    # Answer from the keyboard.
    card.get_by_role("button", name="Answer").focus()
    page.keyboard.press("Enter")
    expect(card).to_contain_text("Answered here")
    expect(html).to_have_attribute("data-ring", "off")
    answered = home.get_call(ring.id)
    assert (answered["state"], answered["answered_by"]) == ("answering", me.id), answered
    companion.shot("answered-here")

    # The handset is told to reject; the carrier forwards the call to the server number and
    # the provider rings this browser's client, which the simulator answers: connected here.
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    expect(card).to_be_hidden()
    live = companion.live(ring.id)
    expect(live).to_contain_text("Live on this browser")
    expect(live).to_contain_text("Ada Lovelace")
    expect(live.get_by_role("button", name="Move here")).to_have_count(0)
    expect(live.locator(".since")).to_have_text(re.compile(r"^0:0\d$"))
    companion.shot("connected-here")

    home.caller_hangs_up(ring)
    home.wait_state(ring.id, "completed")
    expect(live).to_be_hidden()
    history = page.locator(f'.history-item[data-call-id="{ring.id}"]')
    expect(history).to_contain_text("Completed")


def test_another_device_answering_clears_the_card(open_page, web_server):
    home = household(web_server)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    companion.join(home)

    ring = home.ring(caller_name=None)
    card = companion.incoming(ring.id)
    expect(card.get_by_role("heading", name=shown(ring.caller))).to_be_visible()
    expect(companion.page.locator("html")).to_have_attribute("data-ring", "playing")

    ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/answer", token=tablet.token))

    expect(card.locator(".call-status")).to_have_text("Answered on Kitchen tablet")
    expect(card.get_by_role("button", name="Answer")).to_have_count(0)
    expect(companion.page.locator("html")).to_have_attribute("data-ring", "off")
    companion.shot("answered-elsewhere")

    card.get_by_role("button", name="Dismiss").click()
    expect(card).to_have_count(0)


def test_declining_here_everywhere_and_a_missed_call(open_page, web_server):
    home = household(web_server)
    companion = open_page()
    me = companion.join(home)

    # Decline on this browser: the call keeps ringing elsewhere.
    first = home.ring(caller_name="Grace Hopper")
    card = companion.incoming(first.id)
    card.get_by_role("button", name="Decline", exact=True).click()
    expect(card.locator(".call-status")).to_have_text("Declined on this browser")
    declined = home.get_call(first.id)
    assert declined["state"] == "ringing"
    assert any(entry["event"] == "declined_on_device" and entry.get("device") == me.id
               for entry in declined["timeline"]), declined["timeline"]

    # Decline everywhere: the call ends for every device.
    second = home.ring(caller_name="Alan Turing")
    card = companion.incoming(second.id)
    card.get_by_role("button", name="Decline everywhere").click()
    expect(card.locator(".call-status")).to_have_text("Declined everywhere")
    assert home.get_call(second.id)["state"] == "declined"

    # The caller gives up before anyone answers: missed, with the reason.
    third = home.ring(caller_name="Katherine Johnson")
    card = companion.incoming(third.id)
    expect(card.get_by_role("button", name="Answer")).to_be_visible()
    ok(call(web_server, "POST", f"/api/v1/calls/{third.id}/handset-events", token=home.handset.token,
            json={"event": "caller_hung_up"}))
    expect(card.locator(".call-status")).to_have_text("Missed call — the caller hung up")
    expect(companion.page.locator("html")).to_have_attribute("data-ring", "off")
    companion.shot("declined-and-missed")
