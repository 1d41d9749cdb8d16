// The device WebSocket: a single-use ticket per connection (a browser cannot set an
// Authorization header on a WebSocket), an ack for every event, a ping at the
// heartbeat the server announces in `hello`, and reconnection with exponential
// backoff and jitter.

import { api, ApiError } from "./api.js";

const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_FORBIDDEN_ORIGIN = 4403;

// Equal jitter: half the exponential step is fixed, half random, so clients that lost
// the server together do not come back together, and no retry is immediate.
export function backoffDelay(attempt, random = Math.random) {
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return step / 2 + random() * (step / 2);
}

export class Connection {
  // onEvent(frame): every server frame but hello/pong; onState({state, retryAt?, reason?});
  // isRevoked(): resolves true when the device token no longer works (the socket's 4401
  // cannot tell an expired ticket from a deleted device); onRevoked(): give up for good.
  constructor({ onEvent, onHello, onState, isRevoked, onRevoked }) {
    Object.assign(this, { onEvent, onHello, onState, isRevoked, onRevoked });
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
    this.state = "offline";
    this.onBrowserOnline = () => { if (this.state === "offline") this.retryNow(); };
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onBrowserOnline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onBrowserOnline);
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "signed out");
    }
  }

  retryNow() {
    if (this.stopped || this.state !== "offline") return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  setState(state, extra = {}) {
    this.state = state;
    this.onState({ state, ...extra });
  }

  async connect() {
    this.setState("connecting");
    let ticket;
    try {
      ticket = (await api("POST", "/ws-tickets")).ticket;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return this.revoked();
      return this.scheduleRetry(error.message);
    }
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/v1/?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.addEventListener("message", (message) => this.receive(ws, message));
    ws.addEventListener("close", (event) => this.closed(ws, event));
  }

  receive(ws, message) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    this.lastHeard = Date.now();
    if (frame.id) ws.send(JSON.stringify({ type: "ack", id: frame.id }));
    if (frame.type === "hello") {
      this.attempt = 0;
      this.startPinging(ws, frame.heartbeat);
      this.setState("online");
      this.onHello(frame);
    } else if (frame.type !== "pong") {
      this.onEvent(frame);
    }
  }

  startPinging(ws, heartbeatSeconds) {
    const interval = Math.max(1, Number(heartbeatSeconds) || 20) * 1000;
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
      // Nothing heard for two and a half beats: the socket is dead even if it looks open.
      if (Date.now() - this.lastHeard > interval * 2.5) {
        ws.close(4000, "no pong");
        return;
      }
      ws.send(JSON.stringify({ type: "ping" }));
    }, interval);
  }

  async closed(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.pingTimer);
    if (this.stopped) return;
    if (event.code === CLOSE_UNAUTHORIZED) {
      this.setState("connecting");
      if (await this.isRevoked()) return this.revoked();
    }
    const reason = event.code === CLOSE_FORBIDDEN_ORIGIN
      ? "callpull does not accept connections from this page's address."
      : "The connection to callpull was lost.";
    this.scheduleRetry(reason);
  }

  scheduleRetry(reason) {
    if (this.stopped) return;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.setState("offline", { retryAt: Date.now() + delay, reason });
  }

  revoked() {
    this.stop();
    this.setState("offline", { reason: "This browser was removed from your devices." });
    this.onRevoked();
  }
}
