// Ring this browser when the tab is closed: Web Push (the service worker is /sw.js, sw.js).
//
// - The control "Ring this browser when the tab is closed" (shown where the browser has service
//   workers, the Push API and notifications, in a secure context): turning it on asks for the
//   Notification permission (only from that click), registers the service worker (scope `/`),
//   reads the server's VAPID key (GET /api/v1/push/vapid-public-key), subscribes
//   (`userVisibleOnly`, the key as `applicationServerKey`) and stores the subscription on this
//   device (PATCH /api/v1/devices/me `webpush_subscription`); turning it off stores `null` and
//   unsubscribes. Each way it can fail is said in words.
// - The service worker acts for this device with the clicks on its notification: the page keeps
//   what it needs in IndexedDB (`callpull` → `session` → `device`: {token, device_id}),
//   written when it signs in and deleted when it signs out or its device is removed.
// - A click on the notification opens the page at `/?call=<id>` (`&answer=1`: the page answers it
//   once its voice client is ready), or tells an open page the same with a message (`callpull.call`): callFromPush().

import { ApiError } from "./api.js";

const DB_NAME = "callpull";
const STORE = "session";
const KEY = "device";
const WORKER = "/sw.js";
const SCOPE = "/";
const READY_MS = 10000;  // how long a new service worker may take to activate
const SUBSCRIBE_MS = 20000;  // how long the browser's push service may take to give a subscription

export class PushError extends Error {}

export function pushSupported() {
  return Boolean(window.isSecureContext && "serviceWorker" in navigator && "PushManager" in window
    && "Notification" in window);
}

// IndexedDB: what the service worker needs ---------------------------------------------------------

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function write(work) {
  const db = await openDb();
  try {
    await new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, "readwrite");
      work(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve();
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  } finally {
    db.close();
  }
}

// The signed-in session ({token, device}) for the service worker.
export async function rememberDevice(stored) {
  if (!("indexedDB" in window)) return;
  await write((store) => store.put({ token: stored.token, device_id: stored.device.id }, KEY)).catch(() => {});
}

// Signed out or removed: the worker can no longer act for this browser, and nothing rings here.
export async function forgetDevice() {
  if ("indexedDB" in window) await write((store) => store.delete(KEY)).catch(() => {});
  const subscription = await currentSubscription().catch(() => null);
  await subscription?.unsubscribe().catch(() => {});
  showState(false);
}

// Subscribing ---------------------------------------------------------------------------------------

async function currentSubscription() {
  if (!pushSupported()) return null;
  const registration = await navigator.serviceWorker.getRegistration(SCOPE);
  return registration ? registration.pushManager.getSubscription() : null;
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function sameKey(subscription, key) {
  const current = subscription.options?.applicationServerKey;
  if (!current) return true;
  const a = new Uint8Array(current);
  return a.length === key.length && a.every((byte, index) => byte === key[index]);
}

const BLOCKED = "Notifications are blocked for this site: allow them in the browser's site settings, then try again.";

function within(ms, promise, message) {
  let timer;
  const late = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function activeRegistration() {
  let registration;
  try {
    registration = await navigator.serviceWorker.register(WORKER, { scope: SCOPE });
  } catch (error) {
    throw new PushError(`This browser refused callpull's service worker (${error.message}).`);
  }
  try {
    await within(READY_MS, navigator.serviceWorker.ready, "timeout");
  } catch {
    throw new PushError("callpull's service worker did not start in this browser.");
  }
  return registration;
}

// `call`: the page's API function (app.js), which signs out on a 401.
async function enable(call) {
  const permission = await Notification.requestPermission();
  if (permission === "denied") throw new PushError(BLOCKED);
  if (permission !== "granted") throw new PushError("callpull may not show notifications: allow them when the browser asks.");
  const registration = await activeRegistration();
  let key;
  try {
    key = keyBytes((await call("GET", "/push/vapid-public-key")).public_key);
  } catch (error) {
    if (error instanceof ApiError && error.code === "webpush_disabled") {
      throw new PushError("This callpull server does not send Web Push, so the browser can ring only while the tab is open.");
    }
    throw new PushError(`Could not read the server's push key: ${error.message}`);
  }
  let subscription;
  try {
    subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameKey(subscription, key)) {
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription = subscription || await within(SUBSCRIBE_MS,
      registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
      `no answer in ${SUBSCRIBE_MS / 1000} s`);
  } catch (error) {
    if (error.name === "NotAllowedError") throw new PushError(BLOCKED);
    throw new PushError(`This browser could not reach its push service, so it cannot ring with the tab closed (${error.message}).`);
  }
  const { endpoint, keys } = subscription.toJSON();
  try {
    await call("PATCH", "/devices/me", { body: { webpush_subscription: { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } } } });
  } catch (error) {
    await subscription.unsubscribe().catch(() => {});
    throw new PushError(`callpull could not keep this browser's subscription: ${error.message}`);
  }
}

async function disable(call) {
  try {
    await call("PATCH", "/devices/me", { body: { webpush_subscription: null } });
  } catch (error) {
    throw new PushError(`Could not stop ringing with the tab closed: ${error.message}`);
  }
  const subscription = await currentSubscription().catch(() => null);
  await subscription?.unsubscribe().catch(() => {});
}

// The call's notification (sw.js, tag = the call id), once this page has handled the call.
export async function closeCallNotifications(callId) {
  if (!pushSupported()) return;
  const registration = await navigator.serviceWorker.getRegistration(SCOPE).catch(() => null);
  const shown = registration ? await registration.getNotifications({ tag: callId }).catch(() => []) : [];
  for (const notification of shown) notification.close();
}

// The control -----------------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function showState(on, error = "") {
  const toggle = $("#webpush-toggle");
  if (!toggle) return;
  toggle.checked = on;
  $("#webpush-status").textContent = on
    ? "On: this browser rings for your calls while it runs, even with this tab closed."
    : "Off: this browser rings only while this tab is open.";
  const errorElement = $("#webpush-error");
  errorElement.textContent = error;
  errorElement.hidden = !error;
}

async function changed(call, on) {
  const toggle = $("#webpush-toggle");
  toggle.disabled = true;
  $("#webpush-status").textContent = on ? "Turning on…" : "Turning off…";
  try {
    if (on) await enable(call); else await disable(call);
    showState(on);
  } catch (error) {
    showState(!on, error.message);  // nothing changed
  } finally {
    toggle.disabled = false;
  }
}

// Show the control where the browser can push, with its current state.
export async function wirePush({ call }) {
  const setting = $("#webpush-setting");
  if (!setting) return;
  if (!pushSupported()) {
    setting.hidden = true;
    return;
  }
  setting.hidden = false;
  $("#webpush-toggle").addEventListener("change", (event) => changed(call, event.target.checked));
  showState(Boolean(await currentSubscription().catch(() => null)));
}

// A call the notification asked this page to show: from the URL (`?call=<id>[&answer=1]`, the
// parameters then removed) once, and from the service worker's messages while the page is open.
export function callFromPush(onCall) {
  const params = new URLSearchParams(window.location.search);
  const callId = params.get("call");
  const pending = callId ? { callId, answer: params.get("answer") === "1" } : null;
  if (callId) window.history.replaceState(null, "", window.location.pathname);
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", (event) => {
      const message = event.data;
      if (message?.type === "callpull.call" && message.call_id) onCall({ callId: message.call_id, answer: Boolean(message.answer) });
    });
  }
  return pending;
}
