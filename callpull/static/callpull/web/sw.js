// The companion's service worker: rings this browser with the tab closed (Web Push).
//
// Served at /sw.js (callpull/web.py `service_worker`, scope `/`, `Cache-Control: no-cache`), a
// classic script with no imports. callpull pushes `call.ringing`, `call.answered_elsewhere` and
// `call.ended` to the subscription the page stored on its device (push.js); the browser's push
// service wakes this worker with the decrypted message: a JSON object with the FCM data message's
// keys (`type`, `id`, `call_id`, `caller`, `caller_name`, `line`, `expires_at`; docs/CONTRACT.md).
//
// - `call.ringing` shows "Incoming call" (tag: the call id, so every later message about the call
//   replaces it) with Answer and Decline; a ring whose `expires_at` has passed is ignored.
// - `call.answered_elsewhere` / `call.ended` replace it with a short silent notice: Chrome wants a
//   visible notification for every push (userVisibleOnly) and shows a generic one otherwise.
// - A visible companion tab rings by itself (its WebSocket): no notification then.
// - Answer, Decline and a click on the notification act with this device's token, which the page
//   keeps in IndexedDB (`callpull` → `session` → `device`: {token, device_id}); the page
//   writes it when it signs in and deletes it when it signs out or learns its device was removed.
//
// Answer: the browser's leg is a call to this device's voice address, which only a page that is
// ready for it can take (the Twilio Voice SDK's Device registered, or the simulator's WebRTC
// offer made: either takes only a call dialled after it was ready). callpull dials the leg as
// soon as the handset has passed the call on, within a second of the answer, long before a page
// the worker opens could be ready. So the worker never answers first: it opens (or focuses) the
// companion at `/?call=<id>&answer=1` and the page answers once its voice client is ready, as
// its own Answer button does (app.js `answer`). Only when no window can be opened or focused
// does the worker answer by itself, so that the call does not ring on while the person who
// clicked Answer waits; it then says in a notification that the call's sound needs the page.

const DB_NAME = "callpull";
const STORE = "session";
const KEY = "device";
const API = "/api/v1";
const COMPANION = "/";

// IndexedDB: what the page stored for this worker ----------------------------------------------

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function stored(mode, work) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = work(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  } finally {
    db.close();
  }
}

const readSession = () => stored("readonly", (store) => store.get(KEY)).catch(() => null);
const forgetSession = () => stored("readwrite", (store) => store.delete(KEY)).catch(() => null);

// The API, as this device ------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const session = await readSession();
  if (!session?.token) throw new ApiFailure(401, "signed_out", "This browser is not signed in to callpull.");
  const headers = { Accept: "application/json", Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store",
    });
  } catch {
    throw new ApiFailure(0, "network_error", "Could not reach callpull.");
  }
  const payload = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401) await forgetSession();  // the device was removed: its token is dead
    const error = payload?.error;
    throw new ApiFailure(response.status, error?.code || "http_error",
      error?.message || `callpull answered ${response.status}.`);
  }
  return payload;
}

// Notifications ------------------------------------------------------------------------------------

function expired(expiresAt) {
  const at = Date.parse(expiresAt || "");
  return Number.isFinite(at) && at <= Date.now();
}

function callerText(message) {
  const number = message.caller || "";
  if (message.caller_name) return number ? `${message.caller_name} (${number})` : message.caller_name;
  return number || "Unknown caller";
}

function ringing(message) {
  return self.registration.showNotification("Incoming call", {
    tag: message.call_id,
    body: `${callerText(message)}\nLine ${message.line || "unknown"}`,
    requireInteraction: true,
    renotify: true,
    actions: [{ action: "answer", title: "Answer" }, { action: "decline", title: "Decline" }],
    data: { call_id: message.call_id, type: message.type, id: message.id, expires_at: message.expires_at || "" },
    timestamp: Date.now(),
  });
}

// The short notice that replaces the ring (same tag): silent, and it leaves the screen by itself.
function notice(callId, title, body) {
  return self.registration.showNotification(title, {
    tag: callId, body, silent: true, requireInteraction: false, renotify: false, data: { call_id: callId, type: "notice" },
  });
}

async function closeCallNotifications(callId) {
  for (const notification of await self.registration.getNotifications({ tag: callId })) notification.close();
}

async function companionWindows() {
  const all = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  return all.filter((client) => new URL(client.url).pathname === COMPANION);
}

async function onPush(message) {
  if (!message || typeof message !== "object" || !message.call_id) return;
  const visible = (await companionWindows()).some((client) => client.visibilityState === "visible");
  switch (message.type) {
    case "call.ringing":
      if (expired(message.expires_at) || visible) return;
      await ringing(message);
      return;
    case "call.answered_elsewhere":
      await closeCallNotifications(message.call_id);
      if (!visible) await notice(message.call_id, "Answered on another device", callerText(message));
      return;
    case "call.ended":
      await closeCallNotifications(message.call_id);
      if (!visible) await notice(message.call_id, "Call ended", callerText(message));
      return;
    default:
  }
}

self.addEventListener("push", (event) => {
  let message = null;
  try {
    message = event.data ? event.data.json() : null;
  } catch {
    message = null;
  }
  event.waitUntil(onPush(message));
});

// Clicks: Answer, Decline, the notification itself -----------------------------------------------

// Focus a companion window (telling it which call), or open one at `url`. Null when neither works
// (opening and focusing need the click's user activation).
async function showCompanion(url, message) {
  const [existing] = await companionWindows();
  if (existing) {
    existing.postMessage(message);
    try {
      return await existing.focus();
    } catch {
      return existing;
    }
  }
  try {
    return await self.clients.openWindow(url);
  } catch {
    return null;
  }
}

async function answer(callId) {
  const shown = await showCompanion(`${COMPANION}?call=${encodeURIComponent(callId)}&answer=1`,
    { type: "callpull.call", call_id: callId, answer: true });
  if (shown) return;  // the page answers once its voice client is ready
  try {
    await api("POST", `/calls/${encodeURIComponent(callId)}/answer`);
  } catch (error) {
    await notice(callId, "Could not answer", error.message);
    return;
  }
  await notice(callId, "Answered on this browser", "Open callpull to hear the call.");
}

async function decline(callId) {
  try {
    await api("POST", `/calls/${encodeURIComponent(callId)}/decline`, { scope: "device" });
  } catch (error) {
    if (error.code !== "call_ended" && error.code !== "call_not_ringing") {
      await notice(callId, "Could not decline", error.message);
    }
  }
}

async function onClick(notification, action) {
  const callId = notification.data?.call_id;
  notification.close();
  if (!callId) return;
  if (notification.data?.type === "call.ringing" && action === "answer") return answer(callId);
  if (notification.data?.type === "call.ringing" && action === "decline") return decline(callId);
  await showCompanion(`${COMPANION}?call=${encodeURIComponent(callId)}`,
    { type: "callpull.call", call_id: callId, answer: false });
}

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(onClick(event.notification, event.action));
});

// The push service replaced the subscription: store the new one on this device.
async function resubscribed(event) {
  const session = await readSession();
  if (!session?.token) return;
  let subscription = event.newSubscription;
  if (!subscription) {
    const { public_key: key } = await api("GET", "/push/vapid-public-key");
    const padded = key.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (key.length % 4)) % 4);
    subscription = await self.registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)),
    });
  }
  const { endpoint, keys } = subscription.toJSON();
  await api("PATCH", "/devices/me", { webpush_subscription: { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } } });
}

self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(resubscribed(event).catch(() => null));
});

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
