// The ring: a two-tone cadence made with the Web Audio API (nothing to download).
// Browsers keep an AudioContext suspended until the user interacts with the page, so
// the context is resumed on the first click or key press.
//
// The state is mirrored on <html data-ring="off|playing|muted|blocked"> so the user's
// choice is visible to styles and to tests alike.

const MUTED_KEY = "callpull.muted";
const CADENCE_MS = 3000;            // one burst every three seconds
const BURSTS = [[0, 0.4], [0.6, 0.4]];  // seconds: start, length (double ring)
const TONES = [400, 450];           // Hz, the classic double ring

export class Ringer {
  constructor() {
    this.context = null;
    this.timer = null;
    this.wanted = false;
    this.muted = localStorage.getItem(MUTED_KEY) === "1";
    const unlock = () => { this.ensureContext(); if (this.context) this.context.resume().then(() => this.render()); };
    document.addEventListener("pointerdown", unlock, { capture: true });
    document.addEventListener("keydown", unlock, { capture: true });
    this.listeners = new Set();
    this.render();
  }

  onChange(listener) {
    this.listeners.add(listener);
  }

  ensureContext() {
    if (this.context) return this.context;
    const AudioContext = window.AudioContext || window.webkitAudioContext;
    if (!AudioContext) return null;
    this.context = new AudioContext();
    this.context.addEventListener("statechange", () => this.render());
    return this.context;
  }

  start() {
    this.wanted = true;
    this.ensureContext();
    if (this.context && this.context.state === "suspended") this.context.resume().catch(() => {});
    if (!this.timer) {
      this.burst();
      this.timer = setInterval(() => this.burst(), CADENCE_MS);
    }
    this.render();
  }

  stop() {
    this.wanted = false;
    clearInterval(this.timer);
    this.timer = null;
    this.render();
  }

  setMuted(muted) {
    this.muted = muted;
    localStorage.setItem(MUTED_KEY, muted ? "1" : "0");
    this.render();
  }

  burst() {
    const context = this.context;
    if (!context || this.muted || context.state !== "running") return;
    const now = context.currentTime;
    const gain = context.createGain();
    gain.gain.value = 0;
    gain.connect(context.destination);
    for (const [start, length] of BURSTS) {
      // Short ramps in and out: a gain that jumps clicks.
      gain.gain.setValueAtTime(0, now + start);
      gain.gain.linearRampToValueAtTime(0.12, now + start + 0.02);
      gain.gain.setValueAtTime(0.12, now + start + length - 0.02);
      gain.gain.linearRampToValueAtTime(0, now + start + length);
    }
    const end = now + BURSTS[BURSTS.length - 1][0] + BURSTS[BURSTS.length - 1][1];
    for (const frequency of TONES) {
      const oscillator = context.createOscillator();
      oscillator.frequency.value = frequency;
      oscillator.connect(gain);
      oscillator.start(now);
      oscillator.stop(end + 0.05);
    }
  }

  get state() {
    if (!this.wanted) return "off";
    if (this.muted) return "muted";
    if (!this.context || this.context.state !== "running") return "blocked";
    return "playing";
  }

  render() {
    document.documentElement.dataset.ring = this.state;
    for (const listener of this.listeners) listener(this.state);
  }
}
