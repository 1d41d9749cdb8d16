"""The README's walk-through, played as a new user would: the browser tab signed in as the
demo user while `manage.py simulate_call` (the real command, a subprocess against the
test server) plays the handset and the tablet, and the user clicks what the page offers.

Whatever the tab does (answer, move, hang up, decline everywhere), simulate_call plays its
part and exits 0 with a summary saying what happened; the page says the same thing in
every place it shows the call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.support import ROOT, call, eventually
from tests.web.support import CompanionPage, household, sim

pytestmark = pytest.mark.e2e

DEMO = {"username": "demo", "password": "callpull simulator walkthrough"}


# Visible text that its box cuts: clipped or ellipsised wider than it is shown.
CUT_LABELS = """() => [...document.querySelectorAll("#app *, .topbar *")]
    .filter((el) => el.offsetParent !== null && !el.closest(".visually-hidden") && el.textContent.trim()
        && [...el.childNodes].some((node) => node.nodeType === Node.TEXT_NODE && node.textContent.trim()))
    .filter((el) => {
        const style = getComputedStyle(el);
        const clips = style.overflowX !== "visible" || style.textOverflow === "ellipsis";
        return clips && el.scrollWidth > el.clientWidth + 1;
    })
    .map((el) => `${el.className}: ${el.textContent.trim()}`)"""


def demo_account(server) -> None:
    """What the README's first `simulate_call` run does: the demo account exists."""
    created = call(server, "POST", "/api/v1/accounts", json=DEMO)
    assert created.status_code in (201, 400, 409), created.text


def simulate_call(server, state_file, *args: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "manage.py"), "simulate_call", "--base", server.base_url,
               "--state-file", str(state_file), "--timeout", "20", *args]
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"simulate_call did not finish within {timeout:g} s:\n{output}")
    return process.returncode, output


def summary(output: str) -> dict[str, str]:
    """The summary's lines (`answered:  on Work laptop`) as a dict."""
    lines = output.split("\nsummary of call ", 1)[1].splitlines()[1:]
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines if ":" in line}


def signed_in_as_demo(open_page, server) -> CompanionPage:
    demo_account(server)
    companion = open_page()
    companion.page.locator("#password-form").get_by_label("Username").fill(DEMO["username"])
    companion.page.locator("#password-form").get_by_label("Password").fill(DEMO["password"])
    companion.page.locator("#password-form").get_by_label("Name this browser").fill("Work laptop")
    companion.page.locator("#password-form").get_by_role("button", name="Sign in").click()
    companion.expect_online()
    return companion


def ringing_card(companion: CompanionPage, process: subprocess.Popen):
    card = companion.page.locator(".incoming-card[data-status=ringing]")
    try:
        expect(card).to_have_count(1, timeout=20000)
    except AssertionError:
        process.kill()
        raise AssertionError("the tab never rang:\n" + process.communicate()[0]) from None
    call_id = card.get_attribute("data-call-id")
    return companion.incoming(call_id), call_id


def device_leg(server, address: str) -> dict:
    legs = [leg for leg in sim(server, "GET", "/calls") if leg["to"] == f"client:{address}" and not leg["ended_at"]]
    assert len(legs) == 1, legs
    return legs[0]


def test_the_tab_answers_a_simulated_call_moves_it_and_hangs_up(open_page, web_server, tmp_path):
    companion = signed_in_as_demo(open_page, web_server)
    page = companion.page
    me = companion.session()["device"]["id"]
    # The tablet leaves the answer to the tab, and asks for the call a second after it connected.
    process = simulate_call(web_server, tmp_path / "demo.json", "--no-answer", "--move-after", "1", "--talk", "60")

    card, call_id = ringing_card(companion, process)
    card.get_by_role("button", name="Answer").click()
    # "Answered here — connecting…" lasts only until the forwarded call connects (simulate_call's
    # handset rejects at once: a few hundred ms), shorter than the page's polling may see: the
    # outcome is checked instead (tests/web/test_calls.py checks the connecting card on its own).
    live = companion.live(call_id)
    history = page.locator(f'.history-item[data-call-id="{call_id}"]')

    # simulate_call's handset follows the reject it is sent; the call connects here.
    expect(live).to_contain_text("Live on this browser", timeout=15000)
    expect(card).to_be_hidden()
    expect(history.locator(".h-state")).to_have_text("Live on this browser")
    hang_up, mute = live.get_by_role("button", name="Hang up"), live.get_by_role("button", name="Mute")
    expect(hang_up).to_be_enabled()
    expect(mute).to_have_attribute("aria-pressed", "false")
    companion.shot("walkthrough-live-here")

    # Its tablet takes the call: the page follows it everywhere.
    expect(live).to_contain_text("Live on Demo tablet", timeout=15000)
    expect(live).to_contain_text("The call moved to Demo tablet.")
    expect(history.locator(".h-state")).to_have_text("Live on Demo tablet")
    expect(live.get_by_role("button", name="Hang up")).to_have_count(0)
    companion.shot("walkthrough-moved-to-tablet")

    # Back here with Move here, then muted and hung up from the page.
    live.get_by_role("button", name="Move here").click()
    expect(live.locator(".pull-progress")).to_have_text("The call is here now.")
    expect(live).to_contain_text("Live on this browser")
    mute.click()
    expect(mute).to_have_attribute("aria-pressed", "true")
    expect(live).to_contain_text("Muted")
    address = next(d for d in call(web_server, "GET", "/api/v1/devices",
                                   token=companion.session()["token"]).json() if d["id"] == me)["connect"]["address"]
    assert "device_muted" in [event["event"] for event in device_leg(web_server, address)["events"]]
    companion.shot("walkthrough-muted")
    hang_up.click()

    expect(live).to_have_count(0)
    expect(history.locator(".h-state")).to_have_text("Completed")
    again = sim(web_server, "POST", "/devices/hangup", 409, json={"address": address})
    assert again["error"]["code"] == "no_call", again
    rc, output = finished(process)
    assert rc == 0, output
    told = summary(output)
    assert told["answered"] == "on Work laptop", output
    assert told["moves"] == "Work laptop -> Demo tablet; Demo tablet -> Work laptop", output
    assert told["ended"] == "completed: hung up on Work laptop", output
    assert told["result"] == "ok (exit status 0)", output
    assert call_id in output

    # The call's history names every device, each in a lane of its own.
    history.get_by_role("button").click()
    lanes = history.locator(".tl-lane .tl-lane-name")
    expect(lanes).to_have_count(4, timeout=5000)
    assert sorted(lanes.all_inner_texts()) == ["Call", "Demo handset", "Demo tablet", "this browser"]
    expect(history.locator(".history-detail")).to_contain_text("answered on this browser")
    companion.shot("walkthrough-history")

    # A device removed since is still named in the call's history, marked removed.
    tablet = next(d for d in call(web_server, "GET", "/api/v1/devices", token=companion.session()["token"]).json()
                  if d["name"] == "Demo tablet")
    removed = call(web_server, "DELETE", f"/api/v1/devices/{tablet['id']}", token=companion.session()["token"])
    assert removed.status_code == 204, removed.text
    expect(lanes.filter(has_text="Demo tablet (removed)")).to_have_count(1)
    expect(history.locator(".tl-item", has_text="Call moved").first).to_contain_text("Demo tablet (removed)")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        expect(history.locator(".tl-legend-item")).to_have_count(3)
        cut = page.evaluate(CUT_LABELS)
        assert cut == [], f"labels cut at {width} px: {cut}"
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"sideways scroll at {width} px"
        companion.shot(f"walkthrough-history-{width}")


def test_decline_everywhere_ends_a_simulated_call_and_simulate_call_exits_0(open_page, web_server, tmp_path):
    companion = signed_in_as_demo(open_page, web_server)
    process = simulate_call(web_server, tmp_path / "demo.json", "--answer-after", "4", "--talk", "20")

    card, call_id = ringing_card(companion, process)
    card.get_by_role("button", name="Decline everywhere").click()
    expect(card).to_contain_text("Declined everywhere")
    history = companion.page.locator(f'.history-item[data-call-id="{call_id}"]')
    expect(history.locator(".h-state")).to_have_text("Declined")

    rc, output = finished(process)
    assert rc == 0, output
    told = summary(output)
    assert told["answered"] == "nowhere", output
    assert told["ended"] == "declined everywhere on Work laptop", output
    assert "handset   told to reject (declined)" in output, output  # it followed the instruction
    assert "tablet    <- call.ended (call declined, declined)" in output, output
    assert "answered (POST" not in output and "answer refused" not in output, output
    companion.shot("walkthrough-declined")


def test_simulate_call_keeps_its_devices_and_a_sleeping_one_is_reached_by_a_push(web_server, fake_fcm, tmp_path):
    """Two runs: the second reuses the first's devices (history keeps naming them); the
    sleeping device has no WebSocket and an FCM token, so the server's FCM (the fake)
    pushes the ring to it, and the timeline says so."""
    state_file = tmp_path / "demo.json"
    rc, first = finished(simulate_call(web_server, state_file, "--answer-after", "0.2", "--talk", "0.2",
                                       "--sleeping-device", "Sofa tablet"))
    assert rc == 0, first
    kept = json.loads(state_file.read_text())[f"{web_server.base_url} demo"]
    assert set(kept) == {"Demo handset", "Demo tablet", "Sofa tablet"}, kept

    rc, second = finished(simulate_call(web_server, state_file, "--answer-after", "0.2", "--talk", "0.2",
                                        "--sleeping-device", "Sofa tablet"))
    assert rc == 0, second
    assert "reused handset, tablet, sleeper" in second, second
    assert json.loads(state_file.read_text())[f"{web_server.base_url} demo"] == kept

    told = summary(second)
    assert told["answered"] == "on Demo tablet" and told["ended"] == "completed: the caller hung up", second
    assert told["asleep"].startswith("Sofa tablet: pushed over FCM: call.ringing sent"), second
    call_id = second.split("\nsummary of call ", 1)[1].split()[0]
    token = kept["Demo handset"]["token"]
    detail = httpx.get(f"{web_server.base_url}/api/v1/calls/{call_id}", headers={"Authorization": f"Bearer {token}"},
                       trust_env=False).json()
    sofa = kept["Sofa tablet"]["id"]
    pushed = [entry for entry in detail["timeline"] if entry.get("device") == sofa
              and entry["event"] == "notification_sent"]
    assert pushed and {entry["detail"]["transport"] for entry in pushed} == {"fcm"}, detail["timeline"]
    assert {d["name"] for d in detail["devices"]} >= {"Demo handset", "Demo tablet", "Sofa tablet"}, detail["devices"]

    def reached():
        messages = [m for m in fake_fcm.messages() if m.message.get("data", {}).get("call_id") == call_id]
        assert messages, "the fake FCM received no push for the call"
        return messages
    eventually(reached, timeout=5)
    # The reject instruction says how it really went out.
    instructed = [entry for entry in detail["timeline"] if entry["event"] == "reject_instructed"]
    assert instructed and all(entry["detail"]["transport"] == "websocket" and not entry["detail"]["fcm"]
                              for entry in instructed), instructed


def test_without_the_simulator_the_page_says_hang_up_and_mute_are_not_available(open_page, web_server):
    """With a real voice provider the browser's leg would need a voice SDK (issue 16): the
    page does not offer buttons that cannot work, and says why."""
    home = household(web_server)
    companion = open_page()
    companion.page.route("**/simulator/", lambda route: route.fulfill(status=404, body="Not Found"))
    companion.join(home)
    ring = home.ring(caller_name="Ada Lovelace")
    companion.incoming(ring.id).get_by_role("button", name="Answer").click()
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")

    live = companion.live(ring.id)
    expect(live).to_contain_text("Live on this browser")
    expect(live.get_by_role("button", name="Hang up")).to_be_disabled()
    expect(live.get_by_role("button", name="Mute")).to_be_disabled()
    expect(live.locator(".voice-unavailable")).to_contain_text("not available without the simulator")
    companion.shot("walkthrough-no-simulator")
    home.caller_hangs_up(ring)
    home.wait_state(ring.id, "completed")
