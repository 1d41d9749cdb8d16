// The REST API under /api/v1/, with this browser's device token, and the session
// (token and device) kept in localStorage.

const BASE = "/api/v1";
const SESSION_KEY = "callpull.session";

export class ApiError extends Error {
  // `message` is the envelope's message: the server's words, shown to the user as they are.
  constructor(status, code, message, fields = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
}

export const session = {
  load() {
    try {
      const stored = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
      return stored && stored.token && stored.device ? stored : null;
    } catch {
      return null;
    }
  },
  save(value) {
    localStorage.setItem(SESSION_KEY, JSON.stringify(value));
  },
  clear() {
    localStorage.removeItem(SESSION_KEY);
  },
  key: SESSION_KEY,
};

export async function api(method, path, { body, token = session.load()?.token, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, "network_error", "Could not reach callpull. Check your connection and try again.");
  }
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = payload && payload.error;
    if (error && error.message) throw new ApiError(response.status, error.code, error.message, error.fields);
    throw new ApiError(response.status, "http_error", `callpull answered ${response.status} ${response.statusText}.`);
  }
  return payload;
}

// How this browser presents itself when it registers. No `connect`: the server gives a web
// device a voice identity and reaches it at `client:<identity>`, the identity its voice
// token (POST /devices/me/voice-token) is for.
export function browserDevice(name) {
  return { name, kind: "web", platform: "web", ring_enabled: true };
}

export function defaultDeviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge" : /Firefox\//.test(ua) ? "Firefox" : /Chrom(e|ium)\//.test(ua)
    ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const system = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS" : /Mac OS X/.test(ua) ? "Mac"
    : /Windows/.test(ua) ? "Windows" : /Linux|X11/.test(ua) ? "Linux" : "";
  return system ? `${browser} on ${system}` : browser;
}
