// A call's timeline drawn as a time axis: one lane for the call itself and one per
// device, every step placed at its offset from `reported`, the ringing / connecting /
// talking phases as bands, and beneath it the steps as a list with their offsets and
// the gap before each, so a user sees where the seconds went.

import { formatMs, h, humanize, preciseTime } from "./dom.js";

const NOTICE = {
  "call.ringing": "Ring", "call.reject": "Reject instruction", "call.answered_elsewhere": "Answered-elsewhere notice",
  "call.connected": "Connected notice", "call.ended": "Ended notice", "call.transferred": "Transferred notice",
  "pull.requested": "Move request", "pull.approved": "Move approved notice", "pull.denied": "Move denied notice",
  "pull.completed": "Move completed notice", "pull.failed": "Move failed notice",
};
const TRANSPORT = { websocket: "WebSocket", fcm: "FCM" };

function reason(entry) {
  const detail = entry.detail || {};
  return detail.reason ? humanize(detail.reason).toLowerCase() : "";
}

export function describeEntry(entry) {
  const detail = entry.detail || {};
  const notice = NOTICE[detail.type] || humanize(detail.type || "notification");
  const via = TRANSPORT[detail.transport] || detail.transport || "";
  const labels = {
    reported: "Handset reported the call",
    keep_ringing: `Handset keeps ringing${reason(entry) ? ` (${reason(entry)})` : ""}`,
    reject_instructed: "Handset told to reject",
    notification_sent: `${notice} sent${via ? ` over ${via}` : ""}`,
    notification_delivered: `${notice} delivered${via ? ` (${via} ack)` : ""}`,
    notification_failed: `${notice} failed${detail.error ? `: ${detail.error}` : ""}`,
    answered: "Answered",
    declined_on_device: "Declined on the device",
    declined: "Declined everywhere",
    handset_rejected: "Handset rejected the call",
    forwarded_call_arrived: "Forwarded call reached the server number",
    caller_held: "Caller held, hearing ringback",
    leg_dialing: "Dialling the device",
    leg_initiated: "Provider placed the device leg",
    leg_ringing: "Device ringing",
    leg_joined: "Device joined the call",
    leg_failed: `Device leg failed${reason(entry) ? ` (${reason(entry)})` : ""}`,
    leg_left: "Device left the call",
    connected: "Connected",
    ended: `Ended${reason(entry) ? ` (${reason(entry)})` : ""}`,
    dial_ended: `Dial ended${reason(entry) ? ` (${reason(entry)})` : ""}`,
    caller_hung_up: "Caller hung up",
    expired: `Expired${reason(entry) ? ` (${reason(entry)})` : ""}`,
    sent_to_fallback: "Caller sent to the fallback number",
    caller_released: "Caller released",
    pull_requested: "Move requested",
    pull_approved: "Move approved",
    pull_denied: "Move denied",
    pull_completed: "Call moved",
    pull_failed: `Move failed${reason(entry) ? ` (${reason(entry)})` : ""}`,
    transferred: `Transferred${detail.number ? ` to ${detail.number}` : ""}`,
  };
  return labels[entry.event] || humanize(entry.event);
}

function category(event) {
  if (event.startsWith("notification_")) return event === "notification_failed" ? "fail" : "notify";
  if (["reported", "keep_ringing", "reject_instructed", "handset_rejected"].includes(event)) return "handset";
  if (event.startsWith("leg_") || ["forwarded_call_arrived", "caller_held", "dial_ended"].includes(event)) {
    return event === "leg_failed" ? "fail" : "provider";
  }
  if (event.startsWith("pull_") || event === "transferred") return "move";
  if (["ended", "caller_hung_up", "expired", "sent_to_fallback", "caller_released"].includes(event)) return "end";
  return "outcome";
}

function niceStep(total) {
  const rough = total / 5;
  const power = 10 ** Math.floor(Math.log10(Math.max(rough, 0.001)));
  for (const factor of [1, 2, 5, 10]) if (factor * power >= rough) return factor * power;
  return 10 * power;
}

function tickLabel(value, step) {
  if (value === 0) return "0";
  if (step >= 1000) return `${+(value / 1000).toFixed(step % 1000 ? 1 : 0)} s`;
  return `${+value.toFixed(step < 1 ? 1 : 0)} ms`;
}

const percent = (ms, total) => `${Math.min(100, (ms / total) * 100).toFixed(3)}%`;

export function renderTimeline(call, deviceName) {
  const entries = (call.timeline || []).map((entry) => ({ ...entry, t: preciseTime(entry.at) }));
  if (!entries.length) return h("p", { class: "muted", text: "No steps recorded for this call." });
  const reported = entries.find((entry) => entry.event === "reported") || entries[0];
  for (const entry of entries) entry.ms = entry.t - reported.t;
  const total = Math.max(1, ...entries.map((entry) => entry.ms));

  // Lanes: the call's own steps first, then each device in order of appearance.
  const lanes = new Map([["call", []]]);
  for (const entry of entries) {
    const key = entry.device || "call";
    if (!lanes.has(key)) lanes.set(key, []);
    lanes.get(key).push(entry);
  }

  const at = (name) => entries.find((entry) => entry.event === name);
  const endEntry = entries.find((entry) => category(entry.event) === "end" && entry.event !== "sent_to_fallback");
  const answered = at("answered");
  const connected = at("connected");
  const phases = [];
  const ringEnd = answered || endEntry || at("declined");
  if (ringEnd) phases.push(["ringing", "Ringing", 0, ringEnd.ms]);
  if (answered) phases.push(["connecting", "Connecting", answered.ms, (connected || endEntry || answered).ms]);
  if (connected) phases.push(["talking", "Talking", connected.ms, (endEntry || { ms: total }).ms]);

  const step = niceStep(total);
  const ticks = [];
  for (let value = 0; value <= total + step / 1000; value += step) ticks.push(value);

  const track = (children) => h("div", { class: "tl-track" }, children);
  const placed = (element, ms, width) => {
    element.style.left = percent(ms, total);
    if (width !== undefined) element.style.width = percent(width, total);
    return element;
  };

  const axis = h("div", { class: "tl-row tl-axis", "aria-hidden": "true" },
    h("span", { class: "tl-lane-name" }),
    track(ticks.map((value) => placed(h("span", { class: "tl-tick", text: tickLabel(value, step) }), value))));

  // The bands carry no text (a short phase would cut its label to "Con"): the legend
  // beneath names each phase with its length.
  const phaseRow = h("div", { class: "tl-row tl-phases", "aria-hidden": "true" },
    h("span", { class: "tl-lane-name", text: "Phases" }),
    track(phases.map(([kind, label, from, to]) => placed(
      h("span", { class: `tl-phase tl-phase-${kind}`, title: `${label}: ${formatMs(to - from)}` }),
      from, Math.max(0, to - from)))));
  const legend = h("ul", { class: "tl-legend" }, phases.map(([kind, label, from, to]) => h("li", {
    class: "tl-legend-item", dataset: { phase: kind } },
  h("span", { class: `tl-swatch tl-phase-${kind}`, "aria-hidden": "true" }),
  h("span", { class: "tl-phase-label", text: label }), ` ${formatMs(to - from)}`)));

  const laneRows = [...lanes.entries()].map(([key, laneEntries]) => {
    const marks = [];
    // A notification's sent → delivered as a bar: the delivery latency for that device.
    for (const sent of laneEntries.filter((entry) => entry.event === "notification_sent")) {
      const delivered = laneEntries.find((entry) => entry.event === "notification_delivered"
        && entry.detail?.event_id === sent.detail?.event_id);
      if (delivered) marks.push(placed(h("span", { class: "tl-latency" }), sent.ms, delivered.ms - sent.ms));
    }
    for (const entry of laneEntries) {
      marks.push(placed(h("span", {
        class: `tl-mark tl-${category(entry.event)}`,
        title: `+${formatMs(entry.ms)} ${describeEntry(entry)}`,
      }), entry.ms));
    }
    return h("div", { class: "tl-row tl-lane", "aria-hidden": "true" },
      h("span", { class: "tl-lane-name", text: key === "call" ? "Call" : deviceName(key) }), track(marks));
  });

  let previous = 0;
  const list = h("ol", { class: "tl-list" }, entries.map((entry) => {
    const gap = entry.ms - previous;
    previous = entry.ms;
    const gapBar = h("span", { class: "tl-gap-bar" });
    gapBar.style.width = percent(gap, total);
    return h("li", { class: "tl-item", dataset: { event: entry.event } },
      h("span", { class: "tl-ms", text: `+${formatMs(entry.ms)}` }),
      h("span", { class: `tl-dot tl-${category(entry.event)}`, "aria-hidden": "true" }),
      h("span", { class: "tl-what" }, describeEntry(entry),
        entry.device ? h("span", { class: "tl-who", text: ` · ${deviceName(entry.device)}` }) : null),
      h("span", { class: "tl-gap", title: "Time since the previous step" },
        h("span", { class: "visually-hidden", text: "after " }), formatMs(gap), gapBar));
  }));

  return h("figure", { class: "tl", dataset: { total: Math.round(total) } },
    h("div", { class: "tl-chart" }, axis, phases.length ? phaseRow : null, laneRows),
    phases.length ? legend : null,
    h("figcaption", { class: "muted",
      text: `${entries.length} steps over ${formatMs(total)}, from the handset's report.` }),
    list);
}
