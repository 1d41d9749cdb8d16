// The callpull web companion: this tab is one of the user's devices (kind `web`).
// It signs in (password or pairing code), keeps its token in localStorage, listens on
// the device WebSocket, rings for incoming calls, answers and declines them, moves
// live calls here and approves moves away, hangs up and mutes the call it holds (through
// its voice client, voice.js), and shows devices, lines and history.
//
// Everything the user reads comes from the API or its events; errors show the
// envelope's message as the server wrote it.

import { api, ApiError, browserDevice, defaultDeviceName, session } from "./api.js";
import { $, formatClock, formatDuration, formatNumber, h, humanize, preciseTime, replace, timeAgo } from "./dom.js";
import { renderForwarding } from "./forwarding.js";
import { callFromPush, closeCallNotifications, forgetDevice, rememberDevice, wirePush } from "./push.js";
import { drawQr, encodeQr } from "./qr.js";
import { Ringer } from "./ring.js";
import { Connection } from "./socket.js";
import { renderTimeline } from "./timeline.js";
import { voiceClient } from "./voice.js";

const OUTCOME_CARD_SECONDS = 60;   // how long an answered-elsewhere / missed card stays up
const HISTORY_LIMIT = 25;

// Ended calls; a call in progress is described by stateText (who it is live on).
const CALL_STATES = {
  ringing: "Ringing", completed: "Completed", missed: "Missed", declined: "Declined", answered_on_handset: "Answered on the handset",
  failed: "Failed",
};
const END_REASONS = {
  completed: "the call ended", caller_hung_up: "the caller hung up", no_answer: "nobody answered in time",
  forwarded_call_never_arrived: "the forwarded call never reached callpull", declined: "declined",
  answered_on_handset: "answered on the handset", reject_failed: "the handset could not pass the call on",
  device_no_answer: "the device did not pick up", device_busy: "the device was busy",
  device_canceled: "the device call was canceled", device_failed: "the device could not be reached",
  dial_timeout: "the device took too long to answer", provider_error: "the voice provider failed",
  switched: "the call moved", transferred: "the call was transferred",
};
const POLICIES = {
  on_answer: "On answer: the handset keeps ringing until you answer on another device",
  immediate: "Immediate: the handset passes the call on at once; the caller hears ringing until you answer",
};
const KINDS = { handset: "Handset", tablet: "Tablet", desktop: "Desktop", web: "Browser" };

const state = {
  me: null,             // this browser's device id
  devices: new Map(),   // id → device
  lines: [],
  incoming: new Map(),  // call id → {call, status, text, busy, endsAt}
  live: new Map(),      // call id → {call, holder, connectedAt, pull, approval, note, muted, hangingUp}
  calls: new Map(),     // call id → the newest state of the call seen (events, lists, details)
  known: new Map(),     // device id → {name, kind, removed}: devices calls name, removed ones too
  voice: null,          // this browser's voice client (voice.js), once its device is loaded
  audioPending: 0,      // answers and moves whose audio is being prepared
  outputs: [],          // the audio outputs the browser lets the page choose ({id, label})
  devicesLoaded: false,
  declinedHere: new Set(),
  history: [],
  expanded: new Set(),
  account: null,
};
let connection = null;
let ringer = null;

// Errors -------------------------------------------------------------------------

function notify(message, kind = "error") {
  const notice = h("div", { class: `notice notice-${kind}` },
    h("p", { text: message }),
    h("button", { type: "button", class: "link-button", onclick: () => notice.remove() }, "Dismiss"));
  $("#notices").append(notice);
  setTimeout(() => notice.remove(), 12000);
}

// Every authenticated call goes through here: a 401 means this browser's device was
// removed (or its token revoked), so the tab signs out.
async function call(method, path, options = {}) {
  try {
    return await api(method, path, options);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && session.load()) {
      signedOut("This browser was removed from your devices. Sign in again to take calls here.");
    }
    throw error;
  }
}

async function attempt(action, what) {
  try {
    return await action();
  } catch (error) {
    notify(what ? `${what}: ${error.message}` : error.message);
    return undefined;
  }
}

// Focus survives re-rendering: actionable elements carry data-key, and the element
// that had focus is focused again after a list is rebuilt.
function preservingFocus(render) {
  const key = document.activeElement?.dataset?.key;
  render();
  if (key) {
    const again = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again && again !== document.activeElement) again.focus();
  }
}

function deviceName(id) {
  if (!id) return "an unknown device";
  if (id === state.me) return "this browser";
  const device = state.devices.get(id);
  if (device) return device.me ? "this browser" : device.name;
  // Not among the user's devices: removed (once the list is loaded), but still named.
  const known = state.known.get(id);
  if (known) return known.removed || state.devicesLoaded ? `${known.name} (removed)` : known.name;
  return "a removed device";
}

// A call's detail names every device it involved, removed ones too (`devices`).
function learnDevices(detail) {
  for (const device of detail.devices || []) state.known.set(device.id, device);
}

// The newest state of each call, whichever source saw it last: events, the live list, the
// history list. A later state never gives way to an earlier one (a list read before an
// event arrived), so the banner, the live card and the recent list say the same thing.
const STATE_ORDER = { ringing: 0, answering: 1, forwarded: 2, connected: 3 };
const stateRank = (call) => STATE_ORDER[call.state] ?? 4;

function noteCall(call) {
  if (!call || !call.id) return call;
  const known = state.calls.get(call.id);
  const merged = !known || stateRank(call) >= stateRank(known) ? { ...(known || {}), ...call } : known;
  state.calls.set(call.id, merged);
  return merged;
}

// What a call is doing now, in one phrase, for every place on the page that shows it.
function stateText(call) {
  const current = state.calls.get(call.id) || call;
  const live = state.live.get(call.id);
  switch (current.state) {
    case "connected": {
      if (live && live.holder === null && live.onHold) return "On hold";
      const holder = live ? live.holder : current.held_by;
      return `Live on ${deviceName(holder || current.answered_by)}`;
    }
    case "answering":
    case "forwarded":
      return current.answered_by ? `Connecting to ${deviceName(current.answered_by)}…` : "Ringing";
    default:
      return CALL_STATES[current.state] || humanize(current.state);
  }
}

function callerLabel(call) {
  return call.caller_name || (call.caller ? formatNumber(call.caller) : "Unknown caller");
}

function endText(call, reason) {
  const why = END_REASONS[reason || call.end_reason] || humanize(reason || call.end_reason || "");
  switch (call.state) {
    case "missed": return `Missed call — ${why}`;
    case "declined": return "Declined everywhere";
    case "answered_on_handset": return "Answered on the handset";
    case "completed": return "Call ended";
    case "failed": return `Call failed — ${why}`;
    default: return `Ended — ${why}`;
  }
}

// Incoming calls ------------------------------------------------------------------

function setIncoming(call, fields) {
  const entry = state.incoming.get(call.id) || { call, status: "ringing", text: "", busy: false };
  Object.assign(entry, { call: { ...entry.call, ...call } }, fields);
  if (entry.status !== "ringing") closeCallNotifications(call.id);  // one shown while the tab was hidden
  if (entry.status !== "ringing" && entry.status !== "answered_here") {
    entry.endsAt = Date.now() + OUTCOME_CARD_SECONDS * 1000;
    setTimeout(() => {
      const current = state.incoming.get(call.id);
      if (current && current.endsAt && current.endsAt <= Date.now()) dismissIncoming(call.id);
    }, OUTCOME_CARD_SECONDS * 1000 + 50);
  } else {
    entry.endsAt = null;
  }
  state.incoming.set(call.id, entry);
  renderIncoming();
}

function dismissIncoming(callId) {
  state.incoming.delete(callId);
  renderIncoming();
}

// This tab's audio (voice.js): ready before it answers or moves a call here, so the voice
// client takes the call dialled for that answer or move; stopped once no call is here.
async function prepareAudio(expected) {
  if (!state.voice?.prepare) return;
  state.audioPending += 1;
  try {
    await state.voice.prepare(expected);
  } catch (error) {
    notify(`No sound in this browser: ${error.message}`);
  } finally {
    state.audioPending -= 1;
  }
}

function syncAudio() {
  const voice = state.voice;
  if (!voice?.active || state.audioPending) return;
  const wanted = [...state.live.values()].some((entry) => entry.holder === state.me
    || (entry.call.state !== "connected" && entry.call.answered_by === state.me)
    || (entry.pull && ["requesting", "awaiting_approval", "approved"].includes(entry.pull.state)));
  if (!wanted) voice.release();
}

function meterLoop() {
  const meters = document.querySelectorAll(".live-card[data-here='true'] .level-meter");
  if (meters.length && state.voice?.level) {
    const level = Math.min(1, state.voice.level() * 4);
    for (const meter of meters) meter.value = level;
  }
  requestAnimationFrame(meterLoop);
}

async function chooseOutput(id) {
  try {
    await state.voice.setOutput(id);
  } catch (error) {
    notify(`Could not switch the audio output: ${error.message}`);
  }
}

async function answer(callId) {
  const entry = state.incoming.get(callId);
  entry.busy = true;
  renderIncoming();
  await prepareAudio({ call: callId });
  try {
    const answered = noteCall(await call("POST", `/calls/${callId}/answer`));
    setIncoming(answered, { status: "answered_here", text: "Answered here — connecting…", busy: false });
    liveEntry(answered);
    renderLive();
    refreshHistoryStates();
  } catch (error) {
    if (error.code === "already_answered" || error.code === "call_not_ringing") {
      setIncoming(entry.call, { status: "elsewhere", text: error.message, busy: false });
    } else {
      entry.busy = false;
      renderIncoming();
      notify(`Could not answer: ${error.message}`);
    }
  }
}

async function decline(callId, scope) {
  const entry = state.incoming.get(callId);
  entry.busy = true;
  renderIncoming();
  try {
    const declined = await call("POST", `/calls/${callId}/decline`, { body: { scope } });
    if (scope === "device") state.declinedHere.add(callId);
    setIncoming(declined, {
      status: scope === "device" ? "declined_here" : "declined",
      text: scope === "device" ? "Declined on this browser" : "Declined everywhere", busy: false,
    });
  } catch (error) {
    entry.busy = false;
    renderIncoming();
    notify(`Could not decline: ${error.message}`);
  }
}

function renderIncoming() {
  preservingFocus(() => {
    const cards = [...state.incoming.values()].map((entry) => {
      const { call } = entry;
      const ringing = entry.status === "ringing";
      const titleId = `incoming-title-${call.id}`;
      return h("article", {
        class: "call-card incoming-card", dataset: { callId: call.id, status: entry.status },
        "aria-labelledby": titleId,
      },
      h("p", { class: "eyebrow" }, ringing ? "Incoming call" : "Call", " · line ", formatNumber(call.line)),
      h("h2", { class: "caller-name", id: titleId, text: callerLabel(call) }),
      call.caller_name ? h("p", { class: "caller-number", text: formatNumber(call.caller) }) : null,
      h("p", { class: "call-status", text: ringing ? ringerText() : entry.text }),
      ringing ? h("div", { class: "actions" },
        h("button", { type: "button", class: "answer primary", "data-key": `answer:${call.id}`, disabled: entry.busy,
          onclick: () => answer(call.id) }, "Answer"),
        h("button", { type: "button", class: "decline danger", "data-key": `decline:${call.id}`,
          disabled: entry.busy, onclick: () => decline(call.id, "device") }, "Decline"),
        h("button", { type: "button", class: "decline-everywhere", "data-key": `decline-all:${call.id}`,
          disabled: entry.busy, onclick: () => decline(call.id, "everywhere") }, "Decline everywhere"),
        h("button", { type: "button", class: "mute", "data-key": `mute:${call.id}`,
          "aria-pressed": ringer.muted ? "true" : "false", onclick: () => ringer.setMuted(!ringer.muted) },
        "Mute ring"))
        : h("div", { class: "actions" },
          h("button", { type: "button", class: "link-button", "data-key": `dismiss:${call.id}`,
            onclick: () => dismissIncoming(call.id) }, "Dismiss")));
    });
    replace($("#incoming"), cards);
  });
  const ringingNow = [...state.incoming.values()].some((entry) => entry.status === "ringing");
  if (ringingNow) ringer.start(); else ringer.stop();
  document.title = ringingNow ? "Incoming call — callpull" : "callpull";
}

function ringerText() {
  switch (ringer.state) {
    case "muted": return "Ringing (ring muted)";
    case "blocked": return "Ringing (click anywhere on the page to hear the ring)";
    default: return "Ringing";
  }
}

// Live calls, moves and approvals ----------------------------------------------------

// Who holds a connected call: the device of the last `connected` or `pull_completed` step.
function holderFromTimeline(timeline) {
  let holder = null;
  let connectedAt = null;
  for (const entry of timeline || []) {
    if (entry.event === "connected") {
      holder = entry.device || holder;
      connectedAt = entry.at;
    } else if (entry.event === "pull_completed") {
      holder = entry.device || holder;
    } else if (entry.event === "transferred") {
      holder = null;
    }
  }
  return { holder, connectedAt };
}

// A call answered somewhere and not ended: connecting to its device, then live on the
// device holding it (`held_by`; null while the caller waits on hold).
function liveEntry(call) {
  const current = noteCall(call);
  const entry = state.live.get(call.id) || { call: current, holder: current.held_by || null, connectedAt: null,
    pull: null, approval: null, note: "", muted: false, hangingUp: false };
  entry.call = { ...entry.call, ...current };
  if (current.state === "connected" && "held_by" in current) {
    if (current.held_by !== entry.holder) entry.muted = false;  // a leg of its own: not muted
    entry.holder = current.held_by;
    entry.onHold = !current.held_by;
  }
  state.live.set(call.id, entry);
  return entry;
}

const CONNECTING_STATES = ["answering", "forwarded"];

async function loadLive() {
  const lists = await Promise.all(["connected", ...CONNECTING_STATES].map((which) => call("GET", `/calls?state=${which}`)));
  const current = lists.flat().filter((c) => c.state === "connected" || c.answered_by);
  const details = await Promise.all(current.map((c) => call("GET", `/calls/${c.id}`)));
  const seen = new Set();
  for (const detail of details) {
    if (detail.state !== "connected" && !(CONNECTING_STATES.includes(detail.state) && detail.answered_by)) continue;
    seen.add(detail.id);
    learnDevices(detail);
    const entry = liveEntry(detail);
    entry.connectedAt = holderFromTimeline(detail.timeline).connectedAt;
    // A move requested while this tab was away may still wait for this device's answer.
    const open = openPullIds(detail.timeline);
    for (const pullId of open) {
      const { pull } = await call("GET", `/pulls/${pullId}`);
      applyPull(entry, pull);
    }
  }
  for (const id of [...state.live.keys()]) if (!seen.has(id)) state.live.delete(id);
  renderLive();
  refreshHistoryStates();
}

function openPullIds(timeline) {
  const open = new Set();
  for (const entry of timeline || []) {
    const pullId = entry.detail?.pull;
    if (!pullId) continue;
    if (entry.event === "pull_requested") open.add(pullId);
    else if (["pull_approved", "pull_denied", "pull_completed", "pull_failed"].includes(entry.event)) {
      open.delete(pullId);
    }
  }
  return [...open];
}

function applyPull(entry, pull) {
  if (pull.from_device === state.me) {
    if (pull.state === "awaiting_approval") {
      entry.approval = pull;
      entry.note = "";
    } else if (entry.approval && entry.approval.id === pull.id) {
      entry.approval = null;
      entry.note = pull.state === "denied" ? (pull.reason === "timeout" ? "The move request timed out." : "You kept the call here.")
        : pull.state === "approved" ? `Moving the call to ${deviceName(pull.requested_by)}…` : "";
    }
  }
  if (pull.requested_by === state.me) entry.pull = pull;
  if (pull.state === "completed") {
    if (entry.holder !== pull.requested_by) entry.muted = false;
    entry.holder = pull.requested_by;
    entry.onHold = false;
    if (pull.requested_by === state.me) entry.note = "";  // an older "moved to …" is no longer true
    if (pull.from_device === state.me) entry.note = `The call moved to ${deviceName(pull.requested_by)}.`;
  }
}

async function moveHere(callId) {
  const entry = state.live.get(callId);
  entry.pull = { state: "requesting" };
  renderLive();
  await prepareAudio({ call: callId, move: true });
  try {
    const { pull } = await call("POST", `/calls/${callId}/pull`);
    state.voice?.expect?.(callId, pull.id);  // the leg of this move is the one to take (voice-twilio.js)
    applyPull(entry, pull);
  } catch (error) {
    state.voice?.expect?.(callId, null);
    entry.pull = null;
    notify(`Could not move the call here: ${error.message}`);
  }
  renderLive();
}

async function hangUp(callId) {
  const entry = state.live.get(callId);
  if (!entry || !state.voice) return;
  entry.hangingUp = true;
  entry.note = "Hanging up…";
  renderLive();
  try {
    await state.voice.hangUp();
    // The card goes when call.ended arrives.
  } catch (error) {
    entry.hangingUp = false;
    entry.note = "";
    notify(`Could not hang up: ${error.message}`);
  }
  renderLive();
}

async function toggleMute(callId) {
  const entry = state.live.get(callId);
  if (!entry || !state.voice) return;
  try {
    await state.voice.setMuted(!entry.muted);
    entry.muted = !entry.muted;
  } catch (error) {
    notify(`Could not ${entry.muted ? "unmute" : "mute"}: ${error.message}`);
  }
  renderLive();
}

async function decidePull(callId, approve) {
  const entry = state.live.get(callId);
  const pull = entry.approval;
  if (!pull) return;
  entry.approval = { ...pull, busy: true };
  renderLive();
  try {
    const decided = await call("POST", `/pulls/${pull.id}/${approve ? "approve" : "deny"}`);
    applyPull(entry, decided.pull);
  } catch (error) {
    entry.approval = null;
    notify(`Could not ${approve ? "approve" : "deny"} the move: ${error.message}`);
  }
  renderLive();
}

function pullProgress(entry) {
  const pull = entry.pull;
  if (!pull) return null;
  const holder = deviceName(pull.from_device || entry.holder);
  const texts = {
    requesting: "Asking to move the call here…",
    awaiting_approval: `Waiting for ${holder} to approve the move…`,
    approved: "Approved — this browser is joining the call…",
    denied: pull.reason === "timeout" ? `${holder} did not answer the request in time.` : `${holder} kept the call.`,
    completed: "The call is here now.",
    failed: `The move failed${pull.reason ? ` (${humanize(pull.reason).toLowerCase()})` : ""}; the call stayed where it was.`,
  };
  return h("p", { class: "pull-progress", dataset: { state: pull.state, pullId: pull.id }, role: "status",
    text: texts[pull.state] || humanize(pull.state) });
}

function renderLive() {
  preservingFocus(() => {
    const cards = [...state.live.values()].map((entry) => {
      const { call } = entry;
      const here = entry.holder === state.me;
      const titleId = `live-title-${call.id}`;
      const pullOpen = entry.pull && ["requesting", "awaiting_approval", "approved"].includes(entry.pull.state);
      const since = entry.connectedAt ? h("span", { class: "since", dataset: { since: entry.connectedAt } }) : null;
      const approval = entry.approval ? h("div", {
        class: "approval", role: "group", "aria-labelledby": `approval-${call.id}`, dataset: { pullId: entry.approval.id },
      },
      h("p", { id: `approval-${call.id}`, class: "approval-question" },
        h("strong", { text: deviceName(entry.approval.requested_by) }), " wants to take this call."),
      entry.approval.expires_at ? h("p", { class: "muted small" }, "Counts as no in ",
        h("span", { dataset: { until: entry.approval.expires_at } }), ".") : null,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "approve primary", "data-key": `approve:${call.id}`,
          disabled: entry.approval.busy, onclick: () => decidePull(call.id, true) }, "Approve"),
        h("button", { type: "button", class: "deny", "data-key": `deny:${call.id}`, disabled: entry.approval.busy,
          onclick: () => decidePull(call.id, false) }, "Deny"))) : null;
      const connecting = call.state !== "connected";
      const voice = state.voice;
      let holderLine;
      if (connecting) {
        holderLine = h("p", { class: "holder" }, "Connecting to ",
          h("strong", { text: deviceName(call.answered_by) }), "…");
      } else if (entry.holder === null && entry.onHold) {
        holderLine = h("p", { class: "holder" }, h("strong", { text: "On hold" }), " · no device holds the call");
      } else {
        holderLine = h("p", { class: "holder" }, "Live on ", h("strong", { text: deviceName(entry.holder) }),
          entry.muted ? h("span", { class: "badge badge-muted", text: "Muted" }) : null, since ? " · " : null, since);
      }
      // Whoever holds the call here hangs up and mutes it, through this browser's voice client.
      const controls = here && !connecting ? h("div", { class: "actions in-call" },
        h("button", { type: "button", class: "hang-up danger", "data-key": `hangup:${call.id}`,
          disabled: !voice?.available || entry.hangingUp, onclick: () => hangUp(call.id) }, "Hang up"),
        h("button", { type: "button", class: "mute-call", "data-key": `mute-call:${call.id}`,
          "aria-pressed": entry.muted ? "true" : "false", disabled: !voice?.available || entry.hangingUp,
          onclick: () => toggleMute(call.id) }, "Mute"),
        voice?.active ? h("meter", { class: "level-meter", min: "0", max: "1", value: "0",
          "aria-label": "Caller's sound level", title: "Caller's sound level" }) : null,
        voice?.active && voice.canChooseOutput && state.outputs.length ? h("label", { class: "output-choice" },
          h("span", { class: "visually-hidden", text: "Audio output" }),
          h("select", { class: "audio-output", "data-key": `output:${call.id}`,
            onchange: (event) => chooseOutput(event.target.value) },
          ...state.outputs.map((output) => h("option", { value: output.id, selected: output.id === voice.sinkId,
            text: output.label })))) : null) : null;
      const unavailable = controls && voice && !voice.available
        ? h("p", { class: "muted small voice-unavailable", text: voice.reason }) : null;
      return h("article", { class: "call-card live-card", dataset: { callId: call.id, here: here ? "true" : "false",
        state: connecting ? "connecting" : entry.onHold && entry.holder === null ? "on_hold" : "live" },
        "aria-labelledby": titleId },
      h("p", { class: "eyebrow" }, connecting ? "Connecting" : "Live call", " · line ", formatNumber(call.line)),
      h("h3", { class: "caller-name", id: titleId, text: callerLabel(call) }),
      call.caller_name ? h("p", { class: "caller-number", text: formatNumber(call.caller) }) : null,
      holderLine,
      controls,
      unavailable,
      approval,
      entry.note ? h("p", { class: "note", role: "status", text: entry.note }) : null,
      pullProgress(entry),
      !here && !pullOpen && !connecting ? h("div", { class: "actions" },
        h("button", { type: "button", class: "move-here primary", "data-key": `move:${call.id}`,
          onclick: () => moveHere(call.id) }, "Move here")) : null);
    });
    replace($("#live-calls"), cards.length ? cards : h("p", { class: "muted empty", text: "No call in progress." }));
  });
  syncAudio();
  tick();
}

// Devices, pairing and the account's move setting ---------------------------------------

// A list read while presence events arrive can be older than they are: the newest
// presence event wins over a list requested before it, and an older list never
// replaces a newer one.
const presenceSeen = new Map();   // device id → {online, at: when the event arrived}
let devicesRequested = 0;
let devicesApplied = 0;

async function loadDevices() {
  const requested = ++devicesRequested;
  const startedAt = performance.now();
  const devices = await call("GET", "/devices");
  if (requested < devicesApplied) return;
  devicesApplied = requested;
  for (const device of devices) {
    const seen = presenceSeen.get(device.id);
    if (seen && seen.at >= startedAt) device.online = seen.online;
    const previous = state.devices.get(device.id);
    if (previous?.ui) device.ui = previous.ui;
  }
  state.devices = new Map(devices.map((device) => [device.id, device]));
  state.devicesLoaded = true;
  renderDevices();
  for (const id of state.expanded) {  // a device removed since: its lane says so
    const cached = detailCache.get(id);
    if (cached) showDetail(cached);
  }
  const mine = state.devices.get(state.me);
  if (mine && (!state.voice || state.voice.address !== mine.connect?.address)) {
    const voice = await voiceClient(mine.connect, { voiceToken: () => call("POST", "/devices/me/voice-token") });
    if (state.me === mine.id) {
      state.voice?.release?.();
      state.voice = voice;
      state.outputs = voice.outputs ? await voice.outputs().catch(() => []) : [];
      renderLive();
    }
  }
}

function renderDevices() {
  preservingFocus(() => {
    const rows = [...state.devices.values()].map((device) => {
      const ui = device.ui || {};
      const name = device.me ? `${device.name} (this browser)` : device.name;
      const hidden = (text) => h("span", { class: "visually-hidden", text });
      return h("li", { class: "device", dataset: { deviceId: device.id, online: device.online ? "true" : "false" } },
        h("div", { class: "device-main" },
          h("span", { class: "presence-dot", "aria-hidden": "true" }),
          h("div", {},
            h("p", { class: "device-name" }, device.name, device.me ? h("span", { class: "badge", text: "This browser" }) : null),
            h("p", { class: "device-meta muted" }, KINDS[device.kind] || humanize(device.kind), " · ",
              h("span", { class: "presence", text: device.online ? "Online" : `Last seen ${timeAgo(device.last_seen_at)}` })))),
        h("div", { class: "device-actions" },
          device.kind !== "handset" ? h("span", { class: "toggle" },
            h("input", { type: "checkbox", id: `ring-${device.id}`, "data-key": `ring:${device.id}`,
              checked: device.ring_enabled, onchange: (event) => setRing(device, event.target.checked) }),
            h("label", { for: `ring-${device.id}` }, "Ring", hidden(` on ${name}`))) : null,
          h("button", { type: "button", class: "link-button", "data-key": `rename:${device.id}`,
            "aria-expanded": ui.renaming ? "true" : "false", onclick: () => toggleUi(device, "renaming") },
          "Rename", hidden(` ${name}`)),
          h("button", { type: "button", class: "link-button danger-text", "data-key": `remove:${device.id}`,
            "aria-expanded": ui.removing ? "true" : "false", onclick: () => toggleUi(device, "removing") },
          device.me ? "Remove this browser" : h("span", {}, "Remove", hidden(` ${name}`)))),
        ui.renaming ? renameForm(device) : null,
        ui.removing ? h("div", { class: "confirm" },
          h("p", { text: device.me ? "Remove this browser? It signs out and stops ringing here."
            : `Remove ${device.name}? Its sign-in stops working at once.` }),
          h("div", { class: "actions" },
            h("button", { type: "button", class: "danger", "data-key": `remove-yes:${device.id}`,
              onclick: () => removeDevice(device) }, "Remove"),
            h("button", { type: "button", "data-key": `remove-no:${device.id}`,
              onclick: () => toggleUi(device, "removing") }, "Cancel"))) : null);
    });
    replace($("#devices"), rows);
  });
  renderLive();
}

function toggleUi(device, flag) {
  device.ui = { ...(device.ui || {}), [flag]: !(device.ui || {})[flag], draft: undefined };
  renderDevices();
  if (flag === "renaming" && device.ui.renaming) $(`#rename-${CSS.escape(device.id)}`)?.focus();
}

function renameForm(device) {
  const inputId = `rename-${device.id}`;
  return h("form", { class: "rename", novalidate: true, onsubmit: (event) => {
    event.preventDefault();
    renameDevice(device, event.target.elements.name.value.trim());
  } },
  h("label", { for: inputId }, `New name for ${device.name}`),
  h("div", { class: "inline" },
    // The draft survives the list being redrawn (presence changes) while the user types.
    h("input", { id: inputId, name: "name", value: device.ui?.draft ?? device.name, maxlength: 100, required: true,
      "data-key": `rename-input:${device.id}`, oninput: (event) => { device.ui.draft = event.target.value; } }),
    h("button", { type: "submit", class: "primary" }, "Save"),
    h("button", { type: "button", onclick: () => toggleUi(device, "renaming") }, "Cancel")));
}

async function renameDevice(device, name) {
  if (!name) return notify("A device needs a name.");
  const updated = await attempt(() => call("PATCH", `/devices/${device.id}`, { body: { name } }), "Could not rename");
  if (!updated) return attempt(loadDevices);
  state.devices.set(device.id, updated);
  renderDevices();
  if (updated.me) $("#me-name").textContent = updated.name;
  $(`[data-key="rename:${CSS.escape(device.id)}"]`)?.focus();
}

async function setRing(device, enabled) {
  const updated = await attempt(() => call("PATCH", `/devices/${device.id}`, { body: { ring_enabled: enabled } }),
    "Could not change ringing");
  if (!updated) return attempt(loadDevices);  // the list may be stale (a device removed elsewhere)
  state.devices.set(device.id, { ...updated, ui: device.ui });
  renderDevices();
}

async function removeDevice(device) {
  if (device.me) return signOut();
  const done = await attempt(() => call("DELETE", `/devices/${device.id}`), `Could not remove ${device.name}`);
  if (done === undefined) return attempt(loadDevices);
  state.devices.delete(device.id);
  renderDevices();
  $("#add-device").focus();
}

let pairingTimer = null;

async function addDevice() {
  const panel = $("#pairing");
  const pairing = await attempt(() => call("POST", "/pairing-codes"), "Could not make a pairing code");
  if (!pairing) return;
  const code = pairing.code;
  const canvas = h("canvas", { class: "qr", role: "img", "aria-label": `QR code of the pairing code ${code}` });
  drawQr(canvas, encodeQr(code, { level: "M" }), { scale: 6 });
  const shown = code.length === 8 ? `${code.slice(0, 4)}-${code.slice(4)}` : code;
  replace(panel,
    h("h3", { text: "Add a device" }),
    h("p", {}, "On the new device choose “pairing code” and type this code, or scan it. It works once."),
    h("p", { class: "pairing-code", dataset: { code }, "aria-label": `Pairing code: ${code.split("").join(" ")}` }, shown),
    canvas,
    h("p", { class: "muted small" }, "Expires in ", h("span", { dataset: { until: pairing.expires_at } }), "."),
    h("button", { type: "button", id: "pairing-done", onclick: closePairing }, "Done"));
  panel.hidden = false;
  clearTimeout(pairingTimer);
  pairingTimer = setTimeout(closePairing, Math.max(0, Date.parse(pairing.expires_at) - Date.now()));
  tick();
  $("#pairing-done").focus();
}

function closePairing() {
  clearTimeout(pairingTimer);
  const panel = $("#pairing");
  const hadFocus = panel.contains(document.activeElement);
  panel.hidden = true;
  panel.replaceChildren();
  if (hadFocus) $("#add-device").focus();
}

async function loadAccount() {
  state.account = await call("GET", "/account");
  $("#pull-approval").checked = Boolean(state.account.pull_requires_approval);
}

async function setPullApproval(enabled) {
  const updated = await attempt(() => call("PATCH", "/account", { body: { pull_requires_approval: enabled } }),
    "Could not change the setting");
  if (updated) state.account = updated;
  $("#pull-approval").checked = Boolean(state.account?.pull_requires_approval);
}

// Lines ------------------------------------------------------------------------------

async function loadLines() {
  state.lines = await call("GET", "/lines");
  const items = state.lines.map((line) => h("article", { class: "line", dataset: { lineId: line.id } },
    h("h3", { class: "line-number", text: formatNumber(line.number) }),
    h("dl", {},
      h("dt", { text: "Forwards to" }), h("dd", {}, formatNumber(line.server_number), h("span", { class: "muted", text: " (callpull)" })),
      h("dt", { text: "Policy" }), h("dd", { text: POLICIES[line.policy] || humanize(line.policy) })),
    renderForwarding(line)));  // forwarding.js: each kind's state and codes
  replace($("#lines"), items.length ? items
    : h("p", { class: "muted empty", text: "No line yet: the handset app registers your number." }));
}

// History and timelines ------------------------------------------------------------------

let historyTimer = null;

// Events come in bursts (ringing, answered, connected…): one reload per burst, never
// postponed by the next event.
function refreshHistorySoon() {
  if (historyTimer) return;
  historyTimer = setTimeout(() => {
    historyTimer = null;
    attempt(loadHistory, "Could not load recent calls");
  }, 250);
}

async function loadHistory() {
  state.history = await call("GET", `/calls?limit=${HISTORY_LIMIT}`);
  for (const item of state.history) noteCall(item);
  renderHistory();
  for (const id of state.expanded) loadDetail(id);
}

function callLength(call) {
  if (!call.ended_at) return null;
  return formatDuration((Date.parse(call.ended_at) - Date.parse(call.created_at)) / 1000);
}

let historyShown = null;  // what the rows were built from: an unchanged list is not rebuilt

function renderHistory() {
  const shown = JSON.stringify(state.history.map((listed) => {
    const call = state.calls.get(listed.id) || listed;
    return [listed.id, call.state, call.ended_at, state.expanded.has(listed.id)];
  }));
  if (shown === historyShown && $("#history").children.length) {
    refreshHistoryStates();
    return;
  }
  historyShown = shown;
  preservingFocus(() => {
    const items = state.history.map((listed) => {
      const current = state.calls.get(listed.id) || listed;
      const call = { ...listed, ...current };
      const open = state.expanded.has(call.id);
      const length = callLength(call);
      return h("li", { class: "history-item", dataset: { callId: call.id, state: call.state } },
        h("button", { type: "button", class: "history-toggle", "aria-expanded": open ? "true" : "false",
          "aria-controls": `detail-${call.id}`, "data-key": `history:${call.id}`, onclick: () => toggleHistory(call.id) },
        h("span", { class: "h-caller", text: callerLabel(call) }),
        h("span", { class: "h-meta muted" }, formatClock(call.created_at), " · ",
          h("span", { class: `h-state state-${current.state}`, text: stateText(current) }),
          length ? ` · ${length}` : null)),
        h("div", { id: `detail-${call.id}`, class: "history-detail", hidden: !open }));
    });
    replace($("#history"), items.length ? items : h("li", { class: "muted empty", text: "No calls yet." }));
  });
  for (const id of state.expanded) {
    const cached = detailCache.get(id);
    if (cached) showDetail(cached);
  }
}

// The recent list's rows say what each call is doing now, updated in place on every event
// (a rebuild would close what the user is reading); the list itself reloads after events.
function refreshHistoryStates() {
  for (const row of document.querySelectorAll("#history .history-item")) {
    const current = state.calls.get(row.dataset.callId);
    if (!current) continue;
    const label = row.querySelector(".h-state");
    const text = stateText(current);
    if (label && label.textContent !== text) label.textContent = text;
    if (label) label.className = `h-state state-${current.state}`;
    row.dataset.state = current.state;
  }
}

const detailCache = new Map();
const drawnDetails = new WeakMap();  // detail container → what it shows

async function toggleHistory(callId) {
  if (state.expanded.has(callId)) state.expanded.delete(callId); else state.expanded.add(callId);
  renderHistory();
  if (state.expanded.has(callId)) await loadDetail(callId);
}

async function loadDetail(callId) {
  const detail = await attempt(() => call("GET", `/calls/${callId}`), "Could not load the call");
  if (!detail) return;
  learnDevices(detail);
  noteCall(detail);
  detailCache.set(callId, detail);
  showDetail(detail);
}

function showDetail(detail) {
  const container = document.getElementById(`detail-${detail.id}`);
  if (!container || !state.expanded.has(detail.id)) return;
  // The same detail is not drawn again (the list reloads on every burst of events).
  const drawn = JSON.stringify([detail.state, detail.answered_by, detail.end_reason, detail.timeline, detail.devices,
    [...state.devices.keys()]]);
  if (drawnDetails.get(container) === drawn) return;
  drawnDetails.set(container, drawn);
  replace(container,
    h("p", { class: "muted small" },
      detail.caller ? formatNumber(detail.caller) : "Withheld number", " → ", formatNumber(detail.line),
      " · ", detail.policy === "immediate" ? "immediate" : "on answer",
      detail.answered_by ? ` · answered on ${deviceName(detail.answered_by)}` : "",
      detail.end_reason ? ` · ${END_REASONS[detail.end_reason] || humanize(detail.end_reason)}` : ""),
    renderTimeline(detail, deviceName));
}

// Events ---------------------------------------------------------------------------------

function onEvent(frame) {
  const call = frame.call;
  if (call) noteCall(call);
  handleEvent(frame, call);
  if (call) refreshHistoryStates();
}

function handleEvent(frame, call) {
  switch (frame.type) {
    case "call.ringing":
      // A line registered since the page loaded (simulate_call's first run) shows at once.
      if (!state.lines.some((line) => line.number === call.line)) attempt(loadLines, "Could not load lines");
      if (!state.declinedHere.has(call.id)) {
        const current = state.incoming.get(call.id);
        if (!current || current.status === "ringing") setIncoming(call, { status: "ringing" });
        if (document.activeElement === document.body) $(`[data-key="answer:${CSS.escape(call.id)}"]`)?.focus();
      }
      refreshHistorySoon();
      break;
    case "call.answered_elsewhere":
      if (state.incoming.has(call.id)) {
        setIncoming(call, { status: "elsewhere", text: `Answered on ${frame.device?.name || deviceName(frame.device?.id)}` });
      }
      if (frame.device?.id && !state.devices.has(frame.device.id)) state.known.set(frame.device.id, frame.device);
      liveEntry(call);
      renderLive();
      refreshHistorySoon();
      break;
    case "call.connected": {
      // The live call card takes over from the incoming card.
      if (state.incoming.has(call.id)) dismissIncoming(call.id);
      const entry = liveEntry(call);
      if (!("held_by" in call)) entry.holder = entry.holder || call.answered_by;
      entry.connectedAt = entry.connectedAt || frame.at;
      renderLive();
      refreshHistorySoon();
      break;
    }
    case "call.ended":
      if (state.incoming.has(call.id)) {
        const incoming = state.incoming.get(call.id);
        const keep = incoming.status === "declined" || incoming.status === "declined_here";
        setIncoming(call, keep ? {} : { status: "ended", text: endText(call, frame.reason) });
      }
      state.live.delete(call.id);
      renderLive();
      refreshHistorySoon();
      break;
    case "call.holder_lost": {
      // The device that held the call was removed: the caller waits on hold for another device.
      if (frame.device?.id) state.known.set(frame.device.id, { ...frame.device, removed: true });
      const entry = liveEntry(call);
      entry.holder = null;
      entry.onHold = true;
      entry.note = `${frame.device?.name || "The device holding the call"} was removed: the caller is on hold until a device takes the call.`;
      renderLive();
      break;
    }
    case "account.changed":
      // A sensitive change made elsewhere (a new PIN, a device added, a target changed): say
      // which device made it, so a change made with a stolen token does not go unseen.
      if (frame.change.device?.id !== state.me) {
        notify(`Account changed (${humanize(frame.change.action).toLowerCase()}) by ${frame.change.device?.name || "a removed device"}. Not you? Remove that device.`, "info");
      }
      if (frame.change.action.startsWith("device_")) attempt(loadDevices, "Could not load devices");
      break;
    case "call.transferred":
      state.live.delete(call.id);
      renderLive();
      notify(`The call from ${callerLabel(call)} was transferred to ${formatNumber(frame.number)}.`, "info");
      refreshHistorySoon();
      break;
    case "pull.requested":
    case "pull.approved":
    case "pull.denied":
    case "pull.failed":
    case "pull.completed": {
      const entry = liveEntry(call);
      // The device asked is the one holding the call now (answered_by is only the first).
      if (frame.type === "pull.requested" && frame.pull.from_device) entry.holder = frame.pull.from_device;
      applyPull(entry, frame.pull);
      renderLive();
      if (frame.type === "pull.requested" && entry.approval) {
        if (document.activeElement === document.body) $(`[data-key="approve:${CSS.escape(call.id)}"]`)?.focus();
      }
      if (frame.type === "pull.completed") refreshHistorySoon();
      break;
    }
    case "device.presence": {
      presenceSeen.set(frame.device.id, { online: frame.online, at: performance.now() });
      const device = state.devices.get(frame.device.id);
      if (!device) {
        attempt(loadDevices, "Could not load devices");
        break;
      }
      device.online = frame.online;
      if (!frame.online) device.last_seen_at = frame.at;
      renderDevices();
      // A device going offline may have been removed (removal closes its sockets).
      if (!frame.online) attempt(loadDevices, "Could not load devices");
      break;
    }
    default:
      break;
  }
}

// A call the service worker's notification asked this page to show (push.js): `answer` when its
// Answer action was clicked: the page answers as its own button does, its audio ready first (the
// voice client takes only a leg dialled after it was ready: docs/WEB.md). Answered already (the
// worker's fallback, or another tab of this browser): this tab sets up the call's audio, which
// reaches it only if the leg has not been dialled yet.
let pushedCall = null;

async function openPushedCall(wanted) {
  if (!state.me) return;
  const detail = await attempt(() => call("GET", `/calls/${wanted.callId}`), "Could not load the call");
  if (!detail) return;
  learnDevices(detail);
  noteCall(detail);
  if (["ringing", "forwarded"].includes(detail.state) && !detail.answered_by) {
    if (state.declinedHere.has(detail.id)) return;
    const current = state.incoming.get(detail.id);
    if (!current || current.status === "ringing") setIncoming(detail, { status: "ringing" });
    if (wanted.answer && !state.incoming.get(detail.id).busy) await answer(detail.id);
  } else if (detail.answered_by === state.me && CONNECTING_STATES.includes(detail.state)) {
    liveEntry(detail);
    renderLive();
    if (!state.voice?.active) await prepareAudio({ call: detail.id });
    renderLive();
  }
}

async function loadAll() {
  await Promise.all([
    attempt(loadDevices, "Could not load devices"),
    attempt(loadLines, "Could not load lines"),
    attempt(loadAccount, "Could not load settings"),
    attempt(loadHistory, "Could not load recent calls"),
  ]);
  await attempt(loadLive, "Could not load live calls");
  if (pushedCall) {  // the call a notification opened this page for (push.js)
    const wanted = pushedCall;
    pushedCall = null;
    await openPushedCall(wanted);
  }
  // Cards still ringing may have ended while the socket was down.
  for (const entry of [...state.incoming.values()].filter((e) => e.status === "ringing")) {
    const fresh = await attempt(() => call("GET", `/calls/${entry.call.id}`));
    if (fresh && !["ringing", "forwarded"].includes(fresh.state)) {
      setIncoming(fresh, { status: "ended", text: endText(fresh, fresh.end_reason) });
    }
  }
}

// Connection state -------------------------------------------------------------------------

function onConnectionState({ state: connectionState, retryAt, reason }) {
  const element = $("#connection");
  const text = $("#connection-text");
  element.dataset.state = connectionState;
  delete text.dataset.until;
  if (connectionState === "online") text.textContent = "Online";
  else if (connectionState === "connecting") text.textContent = "Connecting…";
  else if (retryAt) {
    text.dataset.until = new Date(retryAt).toISOString();
    text.dataset.prefix = "Offline — retrying in ";
    text.title = reason || "";
  } else {
    text.textContent = "Offline";
    text.title = reason || "";
  }
  $("#retry-now").hidden = !(connectionState === "offline" && retryAt);
  // This browser's own row follows its socket, without waiting for the server to say so.
  const mine = state.devices.get(state.me);
  if (mine && mine.online !== (connectionState === "online") && connectionState !== "connecting") {
    mine.online = connectionState === "online";
    if (!mine.online) mine.last_seen_at = new Date().toISOString();
    renderDevices();
  }
  tick();
}

// Timers: call durations, countdowns, "last seen" -------------------------------------------------

function tick() {
  const now = Date.now();
  for (const element of document.querySelectorAll("[data-since]")) {
    element.textContent = formatDuration((now - preciseTime(element.dataset.since)) / 1000);
  }
  for (const element of document.querySelectorAll("[data-until]")) {
    const seconds = Math.max(0, Math.ceil((Date.parse(element.dataset.until) - now) / 1000));
    const prefix = element.dataset.prefix || "";
    element.textContent = prefix
      ? `${prefix}${seconds} s`
      : seconds >= 60 ? formatDuration(seconds) : `${seconds} s`;
  }
}

// Sign in and out -----------------------------------------------------------------------------

function showSignIn(reason = "") {
  $("#app").hidden = true;
  $("#status-area").hidden = true;
  $("#me-area").hidden = true;
  $("#signin").hidden = false;
  const reasonElement = $("#signin-reason");
  reasonElement.textContent = reason;
  reasonElement.hidden = !reason;
  for (const id of ["#device-name", "#pairing-device-name"]) if (!$(id).value) $(id).value = defaultDeviceName();
}

function showApp(stored) {
  state.me = stored.device.id;
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#status-area").hidden = false;
  $("#me-area").hidden = false;
  $("#me-name").textContent = stored.device.name;
  rememberDevice(stored);
  connection = new Connection({
    onEvent,
    onHello: (frame) => {
      state.me = frame.device.id;
      loadAll();
    },
    onState: onConnectionState,
    isRevoked: async () => {
      try {
        await api("GET", "/devices/me");
        return false;
      } catch (error) {
        return error.status === 401;
      }
    },
    onRevoked: () => signedOut("This browser was removed from your devices. Sign in again to take calls here."),
  });
  connection.start();
  // Everything is loaded on `hello` (and again after every reconnect); if the socket
  // cannot open soon, load over HTTP anyway so the page is not empty.
  clearTimeout(fallbackLoad);
  fallbackLoad = setTimeout(() => { if (connection && connection.state !== "online") loadAll(); }, 2500);
}

let fallbackLoad = null;

function resetState() {
  state.me = null;
  state.devices = new Map();
  state.incoming.clear();
  state.live.clear();
  state.calls.clear();
  state.known.clear();
  state.voice?.release?.();
  state.voice = null;
  state.outputs = [];
  state.devicesLoaded = false;
  state.declinedHere.clear();
  state.history = [];
  historyShown = null;
  state.expanded.clear();
  detailCache.clear();
  for (const selector of ["#incoming", "#live-calls", "#history", "#devices", "#lines"]) $(selector).replaceChildren();
  closePairing();
  ringer.stop();
  document.title = "callpull";
}

function signedOut(reason) {
  if (connection) connection.stop();
  connection = null;
  session.clear();
  forgetDevice();
  resetState();
  showSignIn(reason);
}

async function signOut() {
  const button = $("#sign-out");
  button.disabled = true;
  // The socket closes (4401) as soon as the device is gone; that is this sign-out, not news.
  if (connection) connection.stop();
  try {
    await api("DELETE", "/devices/me");
  } catch (error) {
    if (error.status !== 401) {
      button.disabled = false;
      notify(`Could not sign out: ${error.message}`);
      connection.start();
      return;
    }
  }
  button.disabled = false;
  signedOut("You signed out. This browser no longer rings for your calls.");
  $("#username").focus();
}

function fieldErrors(form, error) {
  for (const input of form.querySelectorAll("input")) input.removeAttribute("aria-invalid");
  for (const name of Object.keys(error.fields || {})) {
    const field = form.elements[name] || form.elements[name.replace(/^device\./, "device_")];
    if (field) field.setAttribute("aria-invalid", "true");
  }
}

async function register(form, errorElement, body) {
  const button = form.querySelector("button[type=submit]");
  errorElement.hidden = true;
  button.disabled = true;
  try {
    const registration = await api("POST", "/devices", { body, auth: false });
    const stored = { token: registration.token, device: { id: registration.device.id, name: registration.device.name } };
    session.save(stored);
    form.reset();
    showApp(stored);
    $("#main").focus();
  } catch (error) {
    errorElement.textContent = error.message;
    errorElement.hidden = false;
    fieldErrors(form, error);
    (form.querySelector("[aria-invalid=true]") || form.querySelector("input[type=password]") || form.querySelector("input"))
      .focus();
  } finally {
    button.disabled = false;
  }
}

function wireSignIn() {
  const passwordForm = $("#password-form");
  passwordForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const username = passwordForm.elements.username.value.trim();
    const password = passwordForm.elements.password.value;
    const name = passwordForm.elements.device_name.value.trim() || defaultDeviceName();
    const errorElement = $("#password-error");
    if (!username || !password) {
      errorElement.textContent = "Enter your username and your password.";
      errorElement.hidden = false;
      (username ? passwordForm.elements.password : passwordForm.elements.username).focus();
      return;
    }
    register(passwordForm, errorElement, { username, password, device: browserDevice(name) });
  });
  const pairingForm = $("#pairing-form");
  pairingForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const code = pairingForm.elements.pairing_code.value.trim();
    const name = pairingForm.elements.device_name.value.trim() || defaultDeviceName();
    const errorElement = $("#pairing-error");
    if (!code) {
      errorElement.textContent = "Enter the code shown on your other device.";
      errorElement.hidden = false;
      pairingForm.elements.pairing_code.focus();
      return;
    }
    register(pairingForm, errorElement, { pairing_code: code, device: browserDevice(name) });
  });
}

// Start ------------------------------------------------------------------------------------

function start() {
  ringer = new Ringer();
  ringer.onChange(() => {
    for (const element of document.querySelectorAll(".incoming-card[data-status=ringing] .call-status")) {
      element.textContent = ringerText();
    }
    for (const button of document.querySelectorAll(".incoming-card .mute")) {
      button.setAttribute("aria-pressed", ringer.muted ? "true" : "false");
    }
  });
  wireSignIn();
  $("#sign-out").addEventListener("click", signOut);
  $("#retry-now").addEventListener("click", () => connection && connection.retryNow());
  $("#add-device").addEventListener("click", addDevice);
  $("#history-refresh").addEventListener("click", () => attempt(loadHistory, "Could not load recent calls"));
  $("#pull-approval").addEventListener("change", (event) => setPullApproval(event.target.checked));
  wirePush({ call });
  pushedCall = callFromPush((wanted) => {
    if (connection) openPushedCall(wanted); else pushedCall = wanted;
  });
  // Another tab signed this browser out (or in).
  window.addEventListener("storage", (event) => {
    if (event.key !== session.key) return;
    if (!session.load() && connection) signedOut("This browser was signed out in another tab.");
  });
  setInterval(tick, 1000);
  requestAnimationFrame(meterLoop);
  // No event says a device was removed while offline: re-read the list now and then, and
  // whenever the tab comes back into view.
  setInterval(() => { if (connection) attempt(loadDevices, "Could not load devices"); }, 30000);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && connection) attempt(loadDevices, "Could not load devices");
  });
  const stored = session.load();
  if (stored) showApp(stored); else showSignIn();
}

start();
