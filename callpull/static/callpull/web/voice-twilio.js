// The Twilio voice client (a real voice provider): this browser takes its leg of a call through
// Twilio's Voice JavaScript SDK (@twilio/voice-sdk, vendored into callpull/static/callpull/vendor/
// by `make vendor`; the page loads it as the global `Twilio` when the server is not the embedded
// simulator). It registers a `Twilio.Device` with this device's Access Token
// (POST /api/v1/devices/me/voice-token), fetches a new one before it expires (`tokenWillExpire`
// → `device.updateToken`), and accepts ONLY the incoming call callpull dialled for the answer
// or move this tab just made: callpull puts the leg's call, leg and pull in the `To` of the
// participant it adds (custom parameters, docs/PROVIDER.md "Client legs' parameters") and the
// SDK hands them over as `call.customParameters`. Any other incoming call is rejected; one an
// answer or move of another tab of this browser (same device, same identity) waits for is left
// to that tab (`call.ignore()`: it stops ringing here only).
//
// The interface (voice.js): {available, reason, address, hangUp(), setMuted(muted)}, with audio
// prepare(expected), release(), level(), active, outputs(), setOutput(id), canChooseOutput;
// and expect(callId, pullId), which tells it the pull id of a move once callpull answered.

import { VoiceError } from "./voice-error.js";

// The custom parameters callpull attaches to a client leg (callpull/legs.py
// CLIENT_LEG_PARAMETERS; tests/callpull/test_client_leg_parameters.py keeps both the same).
export const LEG_PARAMETERS = { call: "callpull_call", leg: "callpull_leg", pull: "callpull_pull" };

// Answers and moves of every tab of this browser (they share the device and its identity):
// {tab, call, pull, at}; pull is null for an answer, PENDING while the move's request runs.
const EXPECTED_KEY = "callpull.voice.expected";
const PENDING = "pending";
// How long an answer or move waits for its leg: the forwarded call may arrive well after an
// answer (CALL_FORWARD_WAIT_SECONDS), and the dial then rings up to DIAL_TIMEOUT_SECONDS.
const EXPECT_SECONDS = 300;
// A leg of a move that arrives before the move's own answer (its pull id) waits this long.
const PENDING_WAIT_MS = 10000;
// Fetch the next token this long before the current one expires (the SDK's tokenWillExpire).
const REFRESH_BEFORE_SECONDS = 60;

function tabId() {
  let id = sessionStorage.getItem("callpull.voice.tab");
  if (!id) {
    id = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("callpull.voice.tab", id);
  }
  return id;
}

function readExpected() {
  try {
    const now = Date.now();
    const all = JSON.parse(localStorage.getItem(EXPECTED_KEY) || "[]");
    return Array.isArray(all) ? all.filter((entry) => now - entry.at < EXPECT_SECONDS * 1000) : [];
  } catch {
    return [];
  }
}

function writeExpected(entries) {
  localStorage.setItem(EXPECTED_KEY, JSON.stringify(entries));
}

function parametersOf(call) {
  const params = call.customParameters;
  const get = (name) => (params && typeof params.get === "function" ? params.get(name) : undefined) ?? null;
  return { call: get(LEG_PARAMETERS.call), leg: get(LEG_PARAMETERS.leg), pull: get(LEG_PARAMETERS.pull) };
}

// Whether an expectation is for this leg: the same call, and the same move (or none: an answer).
function matches(entry, leg) {
  if (!leg.call || entry.call !== leg.call) return false;
  if (entry.pull === PENDING) return leg.pull !== null;  // decided once the move's pull id is known
  return (entry.pull || null) === leg.pull;
}

export class TwilioVoice {
  // `voiceToken`: () => Promise<{token, identity, expires_at}>, this device's Access Token
  // (POST /devices/me/voice-token, through the page's API calls).
  constructor(address, { voiceToken } = {}) {
    this.address = address;
    this.voiceToken = voiceToken;
    this.available = false;
    this.reason = "Connecting the voice client…";
    this.tab = tabId();
    this.device = null;
    this.call = null;               // the call this tab accepted, until it ends
    this.volume = 0;                // the caller's sound, 0..1 (the call's `volume` event)
    this.sinkId = "";
    this.canChooseOutput = false;
    this.wake = null;
  }

  // Register the SDK with this device's token; resolves once registered (or failed: `reason`).
  async start() {
    let issued;
    try {
      if (!this.voiceToken) throw new VoiceError("no voice token");
      issued = await this.voiceToken();
    } catch (error) {
      this.reason = `This browser cannot take calls: ${error.message}`;
      return this;
    }
    if (issued.identity !== this.address) {
      // callpull dials this device at its `connect` address; the SDK answers at its identity.
      this.reason = `This browser is reached at client:${this.address}, but its voice token is for ` +
        `${issued.identity}: sign in again to take calls here.`;
      return this;
    }
    const device = new globalThis.Twilio.Device(issued.token, {
      closeProtection: true, tokenRefreshMs: REFRESH_BEFORE_SECONDS * 1000,
    });
    this.device = device;
    // The page rings on its own (ring.js) and the user answers there: no SDK sounds.
    device.audio?.incoming?.(false);
    device.audio?.outgoing?.(false);
    device.audio?.disconnect?.(false);
    this.canChooseOutput = Boolean(device.audio?.isOutputSelectionSupported);
    device.on("tokenWillExpire", () => this.refresh());
    device.on("incoming", (call) => this.incoming(call));
    device.on("registered", () => { this.available = true; this.reason = ""; });
    device.on("unregistered", () => { this.available = false; this.reason = "The voice client is not registered."; });
    device.on("error", (error) => { this.reason = `The voice client failed: ${error?.message || error}`; });
    try {
      await device.register();
      this.available = true;
      this.reason = "";
    } catch (error) {
      this.reason = `The voice client could not register: ${error?.message || error}`;
    }
    return this;
  }

  async refresh() {
    try {
      const { token } = await this.voiceToken();
      this.device?.updateToken(token);
    } catch (error) {
      this.reason = `This browser cannot take calls: ${error.message}`;
    }
  }

  // This tab is about to answer call `expected.call`, or to move it here (`expected.move`):
  // the leg callpull dials for it is the one to accept.
  async prepare(expected = {}) {
    if (!expected.call) return;
    this.expect(expected.call, expected.move ? PENDING : undefined);
  }

  // What this tab waits for on call `callId`: its answer (pullId undefined), a move whose
  // request runs (PENDING) or was answered (its pull id); null: nothing any more.
  expect(callId, pullId) {
    const others = readExpected().filter((entry) => !(entry.tab === this.tab && entry.call === callId));
    writeExpected(pullId === null ? others
      : [...others, { tab: this.tab, call: callId, pull: pullId === undefined ? null : pullId, at: Date.now() }]);
    this.wake?.();
  }

  // accept (this tab's answer or move), ignore (another tab's of this browser), or reject.
  async decide(leg) {
    const deadline = Date.now() + PENDING_WAIT_MS;
    for (;;) {
      const entries = readExpected().filter((entry) => matches(entry, leg));
      const mine = entries.filter((entry) => entry.tab === this.tab);
      if (mine.some((entry) => entry.pull !== PENDING)) return "accept";
      if (!mine.length) return entries.length ? "ignore" : "reject";
      if (Date.now() >= deadline) return "reject";
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
    }
  }

  async incoming(call) {
    const leg = parametersOf(call);
    const decision = this.call ? "reject" : await this.decide(leg);
    if (decision === "ignore") {
      call.ignore();
      return;
    }
    if (decision === "reject" || this.call) {
      call.reject();
      return;
    }
    this.expect(leg.call, null);
    this.call = call;
    call.on("volume", (input, output) => { this.volume = Math.max(0, Math.min(1, Number(output) || 0)); });
    const ended = () => {
      if (this.call !== call) return;
      this.call = null;
      this.volume = 0;
    };
    for (const event of ["disconnect", "cancel", "reject", "error"]) call.on(event, ended);
    call.accept();
  }

  hangUp() {
    if (!this.call) return Promise.reject(new VoiceError("This browser holds no call."));
    this.call.disconnect();
    return Promise.resolve({ hung_up: true });
  }

  setMuted(muted) {
    if (!this.call) return Promise.reject(new VoiceError("This browser holds no call."));
    this.call.mute(Boolean(muted));
    return Promise.resolve({ muted: Boolean(muted) });
  }

  // The caller's sound here now, 0..1; 0 without a call.
  level() {
    return this.call ? this.volume : 0;
  }

  get active() {
    return Boolean(this.call);
  }

  // The speakers the browser lets this page choose from ([] where it cannot: no setSinkId).
  async outputs() {
    const audio = this.device?.audio;
    if (!audio?.isOutputSelectionSupported) return [];
    return [...audio.availableOutputDevices.values()]
      .map((info, index) => ({ id: info.deviceId, label: info.label || `Output ${index + 1}` }));
  }

  async setOutput(id) {
    const audio = this.device?.audio;
    if (!audio?.isOutputSelectionSupported) throw new VoiceError("This browser does not let a page choose its speaker.");
    await audio.speakerDevices.set(id);
    this.sinkId = id;
  }

  // The call here ended or moved away: hang up what is left of it. The SDK stays registered.
  release() {
    const call = this.call;
    this.call = null;
    this.volume = 0;
    call?.disconnect();
  }

  destroy() {
    this.release();
    this.device?.destroy();
    this.device = null;
    this.available = false;
  }
}

// One voice client per page and voice address: another address (another sign-in) replaces it.
let current = null;

export async function twilioVoice(address, options = {}) {
  if (current && current.address === address) return current;
  current?.destroy();
  current = new TwilioVoice(address, options);
  return current.start();
}
