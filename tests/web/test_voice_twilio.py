"""The companion's Twilio voice client (voice-twilio.js), without Twilio: a server with Twilio
credentials (so not the embedded simulator: the page says `data-voice="twilio"` and loads
the vendored Voice JS SDK), and in the browser a tiny stand-in for the SDK's `Twilio.Device`
and `Call` (STUB, injected with add_init_script; the vendored file is answered with a comment
so that it does not replace the stand-in). The stand-in records what the page asks of it.

What is checked: the Device registers with the token POST /devices/me/voice-token answered;
on `tokenWillExpire` the page fetches a new token and hands it to `updateToken`; an incoming
call whose parameters (callpull/legs.py `client_leg_parameters`) name the answer or move
this tab made is accepted, any other is rejected, one another tab of this browser waits for
is ignored; Hang up, Mute, the level meter and the speaker choice go to the SDK.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.support import Servers, call, eventually, sign_up
from tests.web.conftest import _EXPECTED_CONSOLE
from tests.web.support import SCREENSHOTS, CompanionPage, Household, ok, phone_number

STUB = """
(() => {
  const log = [];
  let calls = 0;
  class Emitter {
    constructor() { this.handlers = {}; }
    on(event, handler) { (this.handlers[event] ||= []).push(handler); return this; }
    emit(event, ...args) { for (const handler of this.handlers[event] || []) handler(...args); }
  }
  class Call extends Emitter {
    constructor(parameters) {
      super();
      this.id = ++calls;
      this.customParameters = new Map(Object.entries(parameters));
      this.muted = false;
    }
    accept() { log.push(["accept", this.id]); }
    reject() { log.push(["reject", this.id]); }
    ignore() { log.push(["ignore", this.id]); }
    disconnect() { log.push(["disconnect", this.id]); this.emit("disconnect", this); }
    mute(muted = true) { this.muted = muted; log.push(["mute", this.id, muted]); }
    isMuted() { return this.muted; }
  }
  class Device extends Emitter {
    constructor(token, options) {
      super();
      this.token = token;
      log.push(["new", token]);
      window.Twilio.devices.push(this);
      this.audio = {
        incoming() {}, outgoing() {}, disconnect() {},
        isOutputSelectionSupported: true,
        availableOutputDevices: new Map([["default", { deviceId: "default", label: "Default" }],
                                         ["usb", { deviceId: "usb", label: "USB headset" }]]),
        speakerDevices: { set: async (id) => { log.push(["speaker", id]); } },
      };
    }
    async register() { log.push(["register", this.token]); this.emit("registered"); }
    updateToken(token) { this.token = token; log.push(["updateToken", token]); }
    destroy() { log.push(["destroy"]); }
  }
  window.Twilio = {
    Device, log, devices: [], calls: {},
    // Twilio rings the registered identity: the newest Device here gets `incoming`.
    ring(parameters) {
      const call = new Call(parameters);
      window.Twilio.calls[call.id] = call;
      window.Twilio.devices.at(-1).emit("incoming", call);
      return call.id;
    },
  };
})();
"""


@pytest.fixture(scope="module")
def twilio_server(environment, fake_fcm):
    """callpull with Twilio credentials (no simulator). Nothing here reaches the provider:
    the forwarded call never arrives, so no leg is dialled (TWILIO_API_BASE is a closed port)."""
    owner = Servers(environment, "twilio-web")
    try:
        yield owner.start(
            name="twilio-web", TWILIO_ACCOUNT_SID="AC" + "7" * 32, TWILIO_AUTH_TOKEN="test-auth-token",
            TWILIO_API_KEY_SID="SK" + "7" * 32, TWILIO_API_KEY_SECRET="test-api-key-secret",
            TWILIO_API_BASE="http://127.0.0.1:9", PRESENCE_HEARTBEAT_SECONDS=2,
            FCM_CREDENTIALS_FILE=str(fake_fcm.credentials_file), FCM_ENDPOINT=fake_fcm.url)
    finally:
        owner.close()


def household(server) -> Household:
    """A user, a handset and a line whose forwarding the handset app reported active (no
    carrier here to dial the MMI code on)."""
    account = sign_up(server, "twilio")
    handset = account.register("handset", name="Pixel 9")
    line = ok(call(server, "POST", "/api/v1/lines", token=handset.token, json={"number": phone_number()}), 201)
    line = ok(call(server, "POST", f"/api/v1/lines/{line['id']}/forwarding", token=handset.token,
                   json={"state": "active", "target": line["server_number"]}))
    return Household(server=server, account=account, handset=handset, line=line)


@pytest.fixture
def companion(browser, twilio_server, request):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, base_url=twilio_server.base_url)
    context.set_default_timeout(8000)
    context.add_init_script(STUB)
    context.route("**/static/callpull/vendor/twilio-voice-sdk-*.min.js",
                  lambda route: route.fulfill(status=200, content_type="text/javascript",
                                              body="// the test's stand-in (add_init_script) plays the SDK\n"))
    page = context.new_page()
    opened = CompanionPage(page=page, server=twilio_server)
    opened.tokens = []  # every voice token the API handed this page, in order

    def voice_token(route):  # passed through to the server as it is; its token noted
        response = route.fetch()
        if response.ok:
            opened.tokens.append(response.json()["token"])
        route.fulfill(response=response)

    context.route("**/api/v1/devices/me/voice-token", voice_token)
    page.on("console", lambda message: message.type == "error" and not _EXPECTED_CONSOLE.match(message.text)
            and opened.errors.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.goto("/")
    yield opened
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        assert not opened.errors, "the page reported errors:\n" + "\n".join(opened.errors)
    finally:
        context.close()


def soon(page, condition, describe) -> None:
    """Wait (bounded) until `condition()` holds; else fail saying `describe()`. Waits through
    the page, so that Playwright meanwhile runs the test's route handlers."""
    def check():
        page.wait_for_timeout(50)
        assert condition(), describe()
    eventually(check, timeout=5)


def sdk_log(page) -> list:
    return page.evaluate("() => window.Twilio.log")


def decisions(page, call_id: int) -> list[str]:
    return [entry[0] for entry in sdk_log(page) if entry[0] in ("accept", "reject", "ignore") and entry[1] == call_id]


def decided(page, call_id: int) -> str:
    def check():
        made = decisions(page, call_id)
        assert made, f"no decision on call {call_id} yet: {sdk_log(page)}"
        assert len(made) == 1, made
        return made[0]
    return eventually(check, timeout=5)


def voice(page, script: str):
    """Run `script` with `v`, the page's Twilio voice client (the module's one instance)."""
    return page.evaluate(f"""async () => {{
        const {{ twilioVoice }} = await import("/static/callpull/web/voice-twilio.js");
        const {{ token }} = JSON.parse(localStorage.getItem("callpull.session"));
        const headers = {{ Authorization: `Bearer ${{token}}` }};
        const me = await (await fetch("/api/v1/devices/me", {{ headers }})).json();
        const v = await twilioVoice(me.connect.address);
        {script}
    }}""")


def test_the_page_registers_the_sdk_with_its_token_and_refreshes_it_before_it_expires(companion, twilio_server):
    home = household(twilio_server)
    page = companion.page
    assert page.locator("html").get_attribute("data-voice") == "twilio"
    companion.join(home)
    me = ok(call(twilio_server, "GET", "/api/v1/devices/me", token=companion.session()["token"]))
    assert me["connect"] == {"type": "client", "address": me["voice_identity"], "verified": True}

    soon(page, lambda: any(entry[0] == "register" for entry in sdk_log(page)), lambda: sdk_log(page))
    assert companion.tokens, "the page fetched no voice token"
    first = companion.tokens[0]
    assert ["new", first] in sdk_log(page) and ["register", first] in sdk_log(page)

    page.evaluate("() => window.Twilio.devices.at(-1).emit('tokenWillExpire')")
    soon(page, lambda: len(companion.tokens) == 2, lambda: companion.tokens)
    soon(page, lambda: ["updateToken", companion.tokens[1]] in sdk_log(page), lambda: sdk_log(page))
    assert len([entry for entry in sdk_log(page) if entry[0] == "new"]) == 1  # the same Device, a new token


def test_only_the_leg_of_this_tabs_answer_is_accepted_and_hang_up_and_mute_go_to_the_sdk(companion, twilio_server):
    home = household(twilio_server)
    page = companion.page
    companion.join(home)
    soon(page, lambda: companion.tokens and ["register", companion.tokens[0]] in sdk_log(page), lambda: sdk_log(page))

    call_id = ok(call(twilio_server, "POST", "/api/v1/calls", token=home.handset.token, json={
        "report_id": str(uuid.uuid4()), "line": home.number, "caller": phone_number(),
        "caller_name": "Ada Lovelace"}), 201)["call"]["id"]
    other_id = str(uuid.uuid4())

    # Before this tab answers, a leg of that very call is not its own: rejected.
    early = page.evaluate("(p) => window.Twilio.ring(p)", {"callpull_call": call_id, "callpull_leg": "L0"})
    assert decided(page, early) == "reject"

    with page.expect_response(lambda response: response.url.endswith(f"/calls/{call_id}/answer")) as answered:
        companion.incoming(call_id).get_by_role("button", name="Answer").click()
    assert answered.value.ok

    stranger = page.evaluate("(p) => window.Twilio.ring(p)", {"callpull_call": other_id, "callpull_leg": "L1"})
    bare = page.evaluate("() => window.Twilio.ring({})")
    a_move = page.evaluate("(p) => window.Twilio.ring(p)",
                           {"callpull_call": call_id, "callpull_leg": "L2", "callpull_pull": str(uuid.uuid4())})
    assert [decided(page, stranger), decided(page, bare), decided(page, a_move)] == ["reject"] * 3

    mine = page.evaluate("(p) => window.Twilio.ring(p)", {"callpull_call": call_id, "callpull_leg": "L3"})
    assert decided(page, mine) == "accept"
    # Held here: a second leg, even of the same call, is not taken.
    again = page.evaluate("(p) => window.Twilio.ring(p)", {"callpull_call": call_id, "callpull_leg": "L4"})
    assert decided(page, again) == "reject"

    assert voice(page, "return v.active && v.available;") is True
    voice(page, "await v.setMuted(true); await v.setMuted(false);")
    assert [entry for entry in sdk_log(page) if entry[0] == "mute"] == [["mute", mine, True], ["mute", mine, False]]

    # The level meter reads the call's `volume` event (the caller's sound: its output volume).
    assert voice(page, "return v.level();") == 0
    page.evaluate("(id) => window.Twilio.calls[id].emit('volume', 0.1, 0.5)", mine)
    assert voice(page, "return v.level();") == 0.5
    voice(page, "await v.setOutput('usb');")
    assert ["speaker", "usb"] in sdk_log(page)
    assert voice(page, "return (await v.outputs()).map((o) => o.label);") == ["Default", "USB headset"]

    voice(page, "await v.hangUp();")
    assert ["disconnect", mine] in sdk_log(page)
    assert voice(page, "return v.active;") is False


def test_a_move_takes_only_the_leg_of_its_own_pull_and_another_tabs_leg_is_left_to_it(companion, twilio_server):
    home = household(twilio_server)
    page = companion.page
    companion.join(home)
    soon(page, lambda: companion.tokens and ["register", companion.tokens[0]] in sdk_log(page), lambda: sdk_log(page))
    call_id, pull_id = str(uuid.uuid4()), str(uuid.uuid4())

    # What app.js does on "Move here": prepare before the request, the pull id once answered.
    voice(page, f"await v.prepare({{ call: {json.dumps(call_id)}, move: true }});")
    leg = {"callpull_call": call_id, "callpull_leg": "L1", "callpull_pull": pull_id}
    early = page.evaluate("(p) => window.Twilio.ring(p)", leg)
    page.wait_for_timeout(400)
    assert decisions(page, early) == []  # the move's request has not answered: wait for its pull id
    voice(page, f"v.expect({json.dumps(call_id)}, {json.dumps(pull_id)});")
    assert decided(page, early) == "accept"
    voice(page, "await v.hangUp();")

    # Another pull of the same call is not this move's.
    voice(page, f"await v.prepare({{ call: {json.dumps(call_id)}, move: true }}); "
                f"v.expect({json.dumps(call_id)}, {json.dumps(str(uuid.uuid4()))});")
    assert decided(page, page.evaluate("(p) => window.Twilio.ring(p)", leg)) == "reject"

    # Another tab of this browser (same device, same identity) moved the call: its leg, not ours.
    elsewhere = str(uuid.uuid4())
    page.evaluate("""([call, pull]) => {
        const entries = JSON.parse(localStorage.getItem("callpull.voice.expected") || "[]");
        entries.push({ tab: "another-tab", call, pull, at: Date.now() });
        localStorage.setItem("callpull.voice.expected", JSON.stringify(entries));
    }""", [elsewhere, pull_id])
    theirs = page.evaluate("(p) => window.Twilio.ring(p)",
                           {"callpull_call": elsewhere, "callpull_leg": "L9", "callpull_pull": pull_id})
    assert decided(page, theirs) == "ignore"
