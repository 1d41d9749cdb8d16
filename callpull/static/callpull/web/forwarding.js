// A line's call forwarding, as the lines panel shows it: each kind the carrier can forward on
// (busy, no answer after its timer, unreachable, always), what the handset last found it set
// to, and the codes to dial for it on the line's carrier profile, plus the conditional group
// (busy, no answer and unreachable at once). Everything comes from the Line of the API:
// `forwarding_kinds` (state per kind) and `codes` (per kind, null where the profile has none).

import { h, humanize, timeAgo } from "./dom.js";

export const FORWARDING_STATES = {
  active: "Active", unverified: "Not checked yet", inactive: "Off", mismatch: "Forwards somewhere else",
};

const KINDS = [
  { kind: "busy", label: "When busy" },
  { kind: "no_answer", label: "When not answered" },
  { kind: "unreachable", label: "When unreachable" },
  { kind: "always", label: "Always" },
  { kind: "conditional", label: "Busy, not answered and unreachable at once", group: true },
];

const PROFILES = {
  "3gpp": "GSM codes (3GPP)",
  nanp_vsc: "North American landline star codes",
  verizon_wireless: "Verizon Wireless",
};

const ACTIONS = [["register", "Turn on"], ["interrogate", "Check"], ["erase", "Turn off"]];

function codesOf(codes) {
  if (!codes) return h("p", { class: "muted no-code", text: "No code on this carrier: set it with your carrier." });
  return h("div", { class: "mmi" }, ACTIONS.filter(([action]) => codes[action]).map(([action, label]) =>
    h("span", {}, `${label} `, h("code", { dataset: { code: action }, text: codes[action] }))));
}

function stateOf(entry, kind) {
  if (!kind) return null;
  const timer = entry.kind === "no_answer" && kind.timer ? ` after ${kind.timer} s` : "";
  return [
    h("span", { class: `badge forwarding-${kind.state}`, dataset: { state: kind.state },
      text: (FORWARDING_STATES[kind.state] || humanize(kind.state)) + (kind.state === "active" ? timer : "") }),
    kind.verified_at ? h("span", { class: "muted", text: ` checked ${timeAgo(kind.verified_at)}` }) : null,
  ];
}

// The forwarding block of one line. A server without forwarding kinds (older API) shows busy alone.
export function renderForwarding(line) {
  const kinds = line.forwarding_kinds || { busy: line.forwarding };
  const codes = line.codes || { busy: line.mmi };
  const profile = line.carrier_profile || "3gpp";
  return h("section", { class: "forwarding-kinds", "aria-label": `Call forwarding of ${line.number}` },
    h("p", { class: "forwarding-profile muted" }, "Codes to dial: ",
      h("span", { dataset: { profile }, text: PROFILES[profile] || humanize(profile) })),
    h("ul", { class: "kinds" }, KINDS.filter((entry) => entry.kind in codes || entry.kind in kinds).map((entry) =>
      h("li", { class: "kind", dataset: { kind: entry.kind } },
        h("p", { class: "kind-head" }, h("span", { class: "kind-name", text: entry.label }), " ",
          entry.group ? null : stateOf(entry, kinds[entry.kind])),
        codesOf(codes[entry.kind])))));
}
