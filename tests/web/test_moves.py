"""Moving a live call in the browser: "Move here" for a call another device holds, and the
approval prompt when another device asks for the call this browser holds.

Calls are connected for real: the handset rejects on the simulated carrier, the call is
forwarded to the server number, the simulated provider puts the caller in the call's
conference and adds the answering device's leg; a pull adds the new device's leg."""

import pytest
from playwright.sync_api import expect

from tests.e2e.support import call, eventually
from tests.web.support import CompanionPage, Household, Ring, household, ok, sim

pytestmark = pytest.mark.e2e


def connected_here(home: Household, companion: CompanionPage, caller_name: str) -> Ring:
    """A call answered on the page and connected to it."""
    ring = home.ring(caller_name=caller_name)
    card = companion.incoming(ring.id)
    card.get_by_role("button", name="Answer").click()
    expect(card).to_contain_text("Answered here")
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    expect(companion.live(ring.id)).to_contain_text("Live on this browser")
    return ring


def pull_state(home: Household, pull_id: str, state: str) -> dict:
    def check():
        pull = ok(call(home.server, "GET", f"/api/v1/pulls/{pull_id}", token=home.handset.token))["pull"]
        assert pull["state"] == state, pull
        return pull
    return eventually(check, timeout=8)


def caller_leg_alive(home: Household, ring: Ring) -> None:
    carrier = sim(home.server, "GET", f"/carrier/calls/{ring.carrier_id}")
    caller = sim(home.server, "GET", f"/calls/{carrier['provider_call_sid']}")
    assert caller["ended_at"] is None, caller


def test_approving_a_pull_hands_the_call_to_the_other_device(open_page, web_server):
    home = household(web_server)
    home.set_account(pull_requires_approval=True)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    me = companion.join(home)
    ring = connected_here(home, companion, "Ada Lovelace")

    pull = ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/pull", token=tablet.token), 202)["pull"]
    assert (pull["state"], pull["from_device"]) == ("awaiting_approval", me.id), pull

    live = companion.live(ring.id)
    prompt = live.locator(".approval")
    expect(prompt).to_contain_text("Kitchen tablet wants to take this call.")
    expect(prompt).to_contain_text("Counts as no in")
    companion.shot("pull-approval-prompt")
    prompt.get_by_role("button", name="Approve").click()

    expect(prompt).to_have_count(0)
    pull_state(home, pull["id"], "completed")
    expect(live).to_contain_text("Live on Kitchen tablet")
    expect(live).to_contain_text("The call moved to Kitchen tablet.")
    expect(live.get_by_role("button", name="Move here")).to_be_visible()
    caller_leg_alive(home, ring)
    companion.shot("pull-approved")


def test_denying_a_pull_keeps_the_call_here(open_page, web_server):
    home = household(web_server)
    home.set_account(pull_requires_approval=True)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    companion.join(home)
    ring = connected_here(home, companion, "Grace Hopper")

    pull = ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/pull", token=tablet.token), 202)["pull"]
    live = companion.live(ring.id)
    prompt = live.locator(".approval")
    expect(prompt).to_contain_text("Kitchen tablet wants to take this call.")
    prompt.get_by_role("button", name="Deny").click()

    expect(prompt).to_have_count(0)
    assert pull_state(home, pull["id"], "denied")["reason"] == "denied"
    expect(live).to_contain_text("You kept the call here.")
    expect(live).to_contain_text("Live on this browser")
    assert home.get_call(ring.id)["state"] == "connected"
    caller_leg_alive(home, ring)
    companion.shot("pull-denied")


def test_move_here_pulls_a_call_another_device_holds(open_page, web_server):
    home = household(web_server)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    me = companion.join(home)

    ring = home.ring(caller_name="Alan Turing")
    ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/answer", token=tablet.token))
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")

    live = companion.live(ring.id)
    expect(live).to_contain_text("Live on Kitchen tablet")
    companion.shot("live-call-elsewhere")
    live.get_by_role("button", name="Move here").click()

    expect(live.locator(".pull-progress")).to_have_text("The call is here now.")
    expect(live).to_contain_text("Live on this browser")
    expect(live.get_by_role("button", name="Move here")).to_have_count(0)
    timeline = home.get_call(ring.id)["timeline"]
    moved = [entry for entry in timeline if entry["event"] == "pull_completed"]
    assert moved and moved[-1]["device"] == me.id, [entry["event"] for entry in timeline]
    caller_leg_alive(home, ring)
    companion.shot("moved-here")


def test_move_here_shows_the_progress_while_the_holder_decides(open_page, web_server):
    home = household(web_server)
    home.set_account(pull_requires_approval=True)
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    companion.join(home)

    ring = home.ring(caller_name="Katherine Johnson")
    ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/answer", token=tablet.token))
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    live = companion.live(ring.id)
    progress = live.locator(".pull-progress")

    def decide(verdict: str) -> None:
        pull = pull_state(home, live.locator(".pull-progress").get_attribute("data-pull-id"), "awaiting_approval")
        ok(call(web_server, "POST", f"/api/v1/pulls/{pull['id']}/{verdict}", token=tablet.token))

    # The holder says no: the call stays, and the page says who kept it.
    live.get_by_role("button", name="Move here").click()
    expect(progress).to_have_attribute("data-state", "awaiting_approval")
    expect(progress).to_have_text("Waiting for Kitchen tablet to approve the move…")
    companion.shot("move-awaiting-approval")
    decide("deny")
    expect(progress).to_have_text("Kitchen tablet kept the call.")
    expect(live).to_contain_text("Live on Kitchen tablet")

    # Asked again, the holder agrees: approved, then the call is here.
    live.get_by_role("button", name="Move here").click()
    expect(progress).to_have_attribute("data-state", "awaiting_approval")
    decide("approve")
    expect(progress).to_have_text("The call is here now.")
    expect(live).to_contain_text("Live on this browser")
    caller_leg_alive(home, ring)


def test_a_call_whose_holder_was_removed_waits_on_hold_and_move_here_takes_it(open_page, web_server):
    """Revoking the device that holds a call (issue 12) puts the caller on hold: the page
    says so, names the removed device, and "Move here" takes the call with no approval."""
    home = household(web_server)
    home.set_account(pull_requires_approval=True)  # nobody is left to approve: not asked
    tablet = home.tablet("Kitchen tablet")
    companion = open_page()
    me = companion.join(home)

    ring = home.ring(caller_name="Hedy Lamarr")
    ok(call(web_server, "POST", f"/api/v1/calls/{ring.id}/answer", token=tablet.token))
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    live = companion.live(ring.id)
    expect(live).to_contain_text("Live on Kitchen tablet")

    ok(call(web_server, "DELETE", f"/api/v1/devices/{tablet.id}", token=home.handset.token), 204)
    expect(live).to_contain_text("On hold")
    expect(live).to_contain_text("Kitchen tablet was removed: the caller is on hold")
    companion.shot("holder-removed-on-hold")
    live.get_by_role("button", name="Move here").click()

    expect(live.locator(".pull-progress")).to_have_text("The call is here now.")
    expect(live).to_contain_text("Live on this browser")
    call_now = home.get_call(ring.id)
    assert (call_now["state"], call_now["held_by"]) == ("connected", me.id), call_now
    caller_leg_alive(home, ring)
