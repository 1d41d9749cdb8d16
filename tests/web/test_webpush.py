"""Ringing the browser with its tab closed (Web Push, issue 17; docs/WEB.md): the service
worker's notification, its Answer and Decline actions, a later push closing it, and the page
Answer opens (`/?call=<id>&answer=1`: the page readies its audio, with the simulator or the
Twilio Voice SDK, then answers, so the leg callpull dials finds it ready); the setting's words
when the browser has no push service or the server no Web Push.

Real Chromium, real server, nothing mocked in either. Two parts of a browser's life cannot
happen here, and the test plays them, saying so:

- The browser vendor's push service. Chromium's PushManager subscribes through Google's
  service, which this machine cannot reach (no internet); besides, every Playwright context
  is an off-the-record profile, where Chrome has no Push API at all (subscribe() fails with
  "Registration failed - permission denied" and Chrome logs that incognito has no Push API,
  crbug.com/41124656). The page's own subscribe path runs up to the VAPID key fetch and the
  browser's failure, and the test checks the page says so in words. The subscription
  callpull then pushes to is one the test creates at the local push service (`POST
  /simulator/webpush/subscriptions`, which keeps its private key) and stores on the
  browser's device with the device's own token, as the page would. callpull encrypts each
  push for it (RFC 8291) and the local service decrypts it; the test hands the decrypted
  message to the service worker through Chrome DevTools Protocol
  `ServiceWorker.deliverPushMessage`, which delivers a trusted `push` event through
  Chromium's own delivery path (the one a message from Google's service takes once
  decrypted).
- A person clicking the system notification. Headless Chromium shows notifications to no
  one, so nothing can click them: the test dispatches a `notificationclick`
  NotificationEvent with the action (`answer`, `decline`) on the real notification
  (`registration.getNotifications()`), inside the service worker. Such an event is not
  trusted, so it carries no user activation and the browser refuses the worker's
  `clients.openWindow` (and `waitUntil` throws after the handler has started its work). For
  Answer, where what matters is the window the worker opens, the test plays the browser's
  part of a real click: for that one dispatch `clients.openWindow` records the address the
  worker asks for and reports a window opened, and the test opens that address in a new tab.
  Without it (the browser refusing the window) the worker's own fallback runs, checked too.
"""

from __future__ import annotations

import json
import uuid

import pytest
from playwright.sync_api import BrowserContext, Page, Worker, expect
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.support import Device, call, eventually
from tests.web.support import household, ok, phone_number, sim
from tests.web.test_voice_twilio import companion as twilio_companion  # noqa: F401  (fixture)
from tests.web.test_voice_twilio import decided, sdk_log, twilio_server  # noqa: F401  (fixture)
from tests.web.test_voice_twilio import household as twilio_household

pytestmark = pytest.mark.e2e

NOTIFICATIONS = """async (tag) => (await self.registration.getNotifications({tag})).map((n) => ({
  title: n.title, body: n.body, tag: n.tag, actions: n.actions.map((a) => a.action),
  requireInteraction: n.requireInteraction, silent: n.silent, data: n.data}))"""

CLICK = """async ([tag, action]) => {
  const [notification] = await self.registration.getNotifications({tag});
  if (!notification) throw new Error(`no notification tagged ${tag}`);
  try {
    self.dispatchEvent(new NotificationEvent("notificationclick", {notification, action}));
  } catch (error) {
    // Only what the handler threw (waitUntil on an untrusted event) lands here, after it started.
  }
}"""

# The click as a person's: the browser would open the window the worker asks for (the click's
# user activation allows it); here the address is recorded, and the test opens it.
CLICK_OPENING = """async ([tag, action]) => {
  const [notification] = await self.registration.getNotifications({tag});
  if (!notification) throw new Error(`no notification tagged ${tag}`);
  const opened = [];
  self.clients.openWindow = async (url) => { opened.push(url); return { url, type: "window" }; };
  try {
    try {
      self.dispatchEvent(new NotificationEvent("notificationclick", {notification, action}));
    } catch (error) {
      // waitUntil on an untrusted event throws once the handler has started.
    }
    for (let waited = 0; !opened.length && waited < 5000; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return opened;
  } finally {
    delete self.clients.openWindow;
  }
}"""


class ChromeIncognitoPushIgnored(list):
    """The page's errors (conftest's `open_page` appends them), less Chrome's console line
    saying an incognito profile has no Push API."""

    def append(self, error: str) -> None:
        if "does not support the Push API in incognito mode" not in error:
            super().append(error)


class ClosedTab:
    """The browser (its context) with the companion's tab closed: an about:blank page stays
    for the DevTools session; pushes are delivered to the service worker over CDP."""

    def __init__(self, context: BrowserContext, origin: str, subscription: dict, blank: Page):
        self.context = context
        self.origin = origin
        self.subscription = subscription
        self.cdp = context.new_cdp_session(blank)
        self.blank = blank
        self.registrations: list[dict] = []
        self.cdp.on("ServiceWorker.workerRegistrationUpdated",
                    lambda params: self.registrations.extend(params["registrations"]))
        self.cdp.send("ServiceWorker.enable")

    def registration_id(self) -> str:
        def found():
            self.blank.wait_for_timeout(50)  # lets Playwright dispatch the CDP events
            live = [r for r in self.registrations if r["scopeURL"] == self.origin + "/" and not r["isDeleted"]]
            assert live, f"no service worker registration for {self.origin}/: {self.registrations}"
            return live[-1]["registrationId"]
        return eventually(found, timeout=5)

    def message(self, server, type_: str, call_id: str) -> dict:
        """The push callpull sent for this call, as the local push service decrypted it."""
        def arrived():
            messages = sim(server, "GET", f"/webpush/subscriptions/{self.subscription['id']}/messages")
            matching = [m for m in messages
                        if m["payload"].get("type") == type_ and m["payload"].get("call_id") == call_id]
            assert matching, f"no {type_} push for {call_id}: {[m['payload'] for m in messages]}"
            return matching[-1]
        return eventually(arrived, timeout=8)

    def deliver(self, message: dict) -> None:
        self.cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": self.origin, "registrationId": self.registration_id(), "data": json.dumps(message["payload"])})

    def push(self, message: dict, check) -> list[dict]:
        """Deliver `message` and wait until the call's notifications pass `check`.

        Chromium keeps its notification database in step with what its display lists, and
        getNotifications() forgets a notification it reads before the display listed it (seen
        here in about one run of this module in five when read at once): the test reads only after a
        pause, and delivers again (the same tag: the same notification) if it was lost that way.
        """
        for attempt in range(3):
            self.deliver(message)
            self.blank.wait_for_timeout(500)
            try:
                return self.expect_notifications(message["payload"]["call_id"], check, timeout=4)
            except AssertionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def worker(self) -> Worker:
        workers = [w for w in self.context.service_workers if w.url == self.origin + "/sw.js"]
        assert workers, "the service worker is not running"
        return workers[-1]

    def in_worker(self, script: str, argument):
        try:
            return self.worker().evaluate(script, argument)
        except PlaywrightError as error:  # the worker stopped meanwhile: the next one is asked
            raise AssertionError(f"the service worker went away: {error}") from error

    def notifications(self, tag: str) -> list[dict]:
        return self.in_worker(NOTIFICATIONS, tag)

    def expect_notifications(self, tag: str, check, *, timeout: float = 8) -> list[dict]:
        def current():
            shown = self.notifications(tag)
            assert check(shown), shown
            return shown
        return eventually(current, timeout=timeout)

    def click(self, tag: str, action: str) -> None:
        """A click the browser does not trust: the worker may not open a window."""
        eventually(lambda: self.in_worker(CLICK, [tag, action]), timeout=5)

    def click_opening(self, tag: str, action: str) -> list[str]:
        """A click as a person's: the addresses of the windows the worker opened for it."""
        return eventually(lambda: self.in_worker(CLICK_OPENING, [tag, action]), timeout=5)


def subscribed_and_closed(open_page, web_server, home) -> tuple[Device, ClosedTab]:
    """Sign the page in, turn the setting on (the browser's push service is out of reach
    here: the page says so), store a subscription at the local push service on its device,
    and close the tab."""
    companion = open_page()
    page = companion.page
    page.context.grant_permissions(["notifications"], origin=web_server.base_url)
    me = companion.join(home)

    # Chrome's own console line for subscribe() in an off-the-record profile (every Playwright
    # context is one) is not the page's fault: the one console error this test lets pass.
    companion.errors = ChromeIncognitoPushIgnored(companion.errors)
    toggle = page.get_by_label("Ring this browser when the tab is closed")
    expect(toggle).to_be_visible()
    expect(toggle).not_to_be_checked()
    with page.expect_response("**/api/v1/push/vapid-public-key") as key_response:
        toggle.check()
    key = key_response.value
    assert key.status == 200, key.text()
    error = page.locator("#webpush-error")
    expect(error).to_contain_text("could not reach its push service", timeout=30_000)
    expect(toggle).not_to_be_checked()
    expect(page.locator("#webpush-status")).to_contain_text("Off")
    companion.shot("webpush-no-push-service")
    # The service worker the page registered is in place for pushes.
    assert page.evaluate("async () => Boolean((await navigator.serviceWorker.getRegistration('/'))?.active)")

    subscription = sim(web_server, "POST", "/webpush/subscriptions", 201)
    ok(call(web_server, "PATCH", "/api/v1/devices/me", token=me.token, json={
        "webpush_subscription": {"endpoint": subscription["endpoint"], "keys": subscription["keys"]}}))

    blank = page.context.new_page()
    page.close()
    return me, ClosedTab(page.context, web_server.base_url, subscription, blank)


def test_with_the_tab_closed_a_push_shows_the_call_and_its_answer_action_answers_as_this_browser(
        open_page, web_server):
    home = household(web_server)
    me, browser = subscribed_and_closed(open_page, web_server, home)

    ring = home.ring(caller_name="Ada Lovelace")
    pushed = browser.message(web_server, "call.ringing", ring.id)
    assert pushed["urgency"] == "high", pushed
    assert pushed["payload"]["caller_name"] == "Ada Lovelace"
    [shown] = browser.push(pushed, lambda shown: len(shown) == 1)
    assert shown["title"] == "Incoming call"
    assert shown["tag"] == ring.id
    assert shown["actions"] == ["answer", "decline"]
    assert shown["requireInteraction"] is True
    assert "Ada Lovelace" in shown["body"] and ring.caller in shown["body"] and home.number in shown["body"]

    # Answer opens the companion for the page to answer once its audio is ready: the worker
    # itself does not answer (the leg dialled for it would find no page ready for it).
    assert browser.click_opening(ring.id, "answer") == [f"/?call={ring.id}&answer=1"]
    browser.expect_notifications(ring.id, lambda shown: shown == [])
    assert home.get_call(ring.id)["state"] == "ringing"

    page = browser.context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"/?call={ring.id}&answer=1")

    def answered():
        current = home.get_call(ring.id)
        assert current["answered_by"] == me.id, (current["state"], current["answered_by"])
        return current
    assert eventually(answered, timeout=15)["state"] == "answering"
    # The page's WebRTC offer went to the simulator before its answer: its peer waits for the leg.
    identity = next(d for d in ok(call(web_server, "GET", "/api/v1/devices", token=me.token))
                    if d["id"] == me.id)["connect"]["address"]
    waiting = [peer for peer in sim(web_server, "GET", "/media")["peers"]
               if peer["address"] == f"client:{identity}" and peer["state"] == "waiting"]
    assert len(waiting) == 1, sim(web_server, "GET", "/media")["peers"]
    live = page.locator(f'.live-card[data-call-id="{ring.id}"]')
    expect(live).to_contain_text("Connecting to this browser")
    expect(page).to_have_url(web_server.base_url + "/")  # the parameters are taken once
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    expect(live).to_contain_text("Live on this browser")
    expect(live.locator(".level-meter")).to_be_visible()  # this tab's audio is up (voice.active)
    caller = sim(web_server, "GET", f"/carrier/calls/{ring.carrier_id}")["provider_call_sid"]

    def bound():  # the simulator attached this tab's WebRTC peer to the leg it dialled
        peers = sim(web_server, "GET", f"/media/{caller}")["peers"]
        assert len(peers) == 1 and peers[0]["state"] == "bound" and peers[0]["voice_frames_sent"] > 0, peers
    # The peer was waiting before the leg was dialled; binding waits for the leg to join the
    # conference and the first frames (seconds on two busy cores).
    eventually(bound, timeout=20)
    home.caller_hangs_up(ring)
    home.wait_state(ring.id, "completed")
    expect(live).to_be_hidden()
    assert not errors, errors


def test_decline_from_the_notification_and_a_call_answered_elsewhere_closes_it(open_page, web_server):
    home = household(web_server)
    tablet = home.tablet("Kitchen tablet")
    me, browser = subscribed_and_closed(open_page, web_server, home)

    # Decline: this browser stops ringing, the call rings on elsewhere.
    first = home.ring(caller_name="Grace Hopper")
    browser.push(browser.message(web_server, "call.ringing", first.id), lambda shown: len(shown) == 1)
    browser.click(first.id, "decline")

    def declined():
        current = home.get_call(first.id)
        assert any(entry["event"] == "declined_on_device" and entry.get("device") == me.id
                   for entry in current["timeline"]), current["timeline"]
        return current
    assert eventually(declined, timeout=8)["state"] == "ringing"
    browser.expect_notifications(first.id, lambda shown: shown == [])
    ok(call(web_server, "POST", f"/api/v1/calls/{first.id}/decline", token=tablet.token, json={"scope": "everywhere"}))

    # Answered on the tablet: the ringing notification gives way to a silent notice, no actions.
    second = home.ring(caller_name="Alan Turing")
    browser.push(browser.message(web_server, "call.ringing", second.id),
                 lambda shown: [n["title"] for n in shown] == ["Incoming call"])
    ok(call(web_server, "POST", f"/api/v1/calls/{second.id}/answer", token=tablet.token))
    [notice] = browser.push(browser.message(web_server, "call.answered_elsewhere", second.id),
                            lambda shown: [n["title"] for n in shown] == ["Answered on another device"])
    assert notice["actions"] == [] and notice["requireInteraction"] is False and notice["silent"] is True
    assert "Alan Turing" in notice["body"]

    # Answer on a click the browser opens no window for (here: one it does not trust): the worker
    # answers by itself, so the call stops ringing for the person who clicked, and says where the
    # sound is.
    fallback = home.ring(caller_name="Dorothy Vaughan")
    browser.push(browser.message(web_server, "call.ringing", fallback.id), lambda shown: len(shown) == 1)
    browser.click(fallback.id, "answer")
    eventually(lambda: home.get_call(fallback.id)["answered_by"] == me.id
               or (_ for _ in ()).throw(AssertionError(home.get_call(fallback.id))), timeout=8)
    [said] = browser.expect_notifications(fallback.id, lambda shown: [n["title"] for n in shown] == [
        "Answered on this browser"])
    assert said["body"] == "Open callpull to hear the call." and said["actions"] == []

    # Rung with the tab closed, handled in a tab opened since: the page closes the notification.
    third = home.ring(caller_name="Katherine Johnson")
    browser.push(browser.message(web_server, "call.ringing", third.id), lambda shown: len(shown) == 1)
    page = browser.context.new_page()
    page.goto("/")
    card = page.locator(f'.incoming-card[data-call-id="{third.id}"]')
    card.get_by_role("button", name="Decline", exact=True).click()
    expect(card.locator(".call-status")).to_have_text("Declined on this browser")
    browser.expect_notifications(third.id, lambda shown: shown == [])


# With Twilio (a server that is not the embedded simulator, which has no VAPID key unless one is
# configured: Web Push off), reusing test_voice_twilio's server and its stand-in for the Voice SDK.
STORED = """() => new Promise((resolve, reject) => {
  const request = indexedDB.open("callpull", 1);
  request.onupgradeneeded = () => request.result.createObjectStore("session");
  request.onerror = () => reject(request.error);
  request.onsuccess = () => {
    const get = request.result.transaction("session").objectStore("session").get("device");
    get.onsuccess = () => { request.result.close(); resolve(get.result ?? null); };
  };
})"""


def test_with_twilio_web_push_off_is_said_and_the_page_opened_to_answer_answers_once_its_device_is_registered(
        twilio_companion, twilio_server):  # noqa: F811  (the fixtures imported above)
    home = twilio_household(twilio_server)
    companion = twilio_companion
    page = companion.page
    page.context.grant_permissions(["notifications"], origin=twilio_server.base_url)
    me = companion.join(home)

    # What the service worker acts with: this device's token.
    assert page.evaluate(STORED) == {"token": me.token, "device_id": me.id}

    toggle = page.get_by_label("Ring this browser when the tab is closed")
    toggle.check()
    expect(page.locator("#webpush-error")).to_have_text(
        "This callpull server does not send Web Push, so the browser can ring only while the tab is open.")
    expect(toggle).not_to_be_checked()
    assert call(twilio_server, "GET", "/api/v1/push/vapid-public-key").json()["error"]["code"] == "webpush_disabled"

    # Answer on the notification: the worker opens the page at ?call=<id>&answer=1 (here the
    # test opens it) and the page answers once its Voice SDK Device is registered, so
    # the leg callpull dials is one this tab expects.
    call_id = ok(call(twilio_server, "POST", "/api/v1/calls", token=home.handset.token, json={
        "report_id": str(uuid.uuid4()), "line": home.number, "caller": phone_number(),
        "caller_name": "Ada Lovelace"}), 201)["call"]["id"]
    page.goto(f"/?call={call_id}&answer=1")
    expect(companion.incoming(call_id)).to_contain_text("Answered here")
    registered = [i for i, entry in enumerate(sdk_log(page)) if entry[0] == "register"]
    assert registered, sdk_log(page)
    assert ok(call(twilio_server, "GET", f"/api/v1/calls/{call_id}", token=home.handset.token))["answered_by"] == me.id
    leg = page.evaluate("(p) => window.Twilio.ring(p)", {"callpull_call": call_id, "callpull_leg": "L1"})
    assert decided(page, leg) == "accept"

    # Signing out takes the worker's credentials away.
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin")).to_be_visible()
    eventually(lambda: page.evaluate(STORED) is None or (_ for _ in ()).throw(AssertionError("still stored")))
