// The simulator's voice client (the embedded default, docs/SIMULATOR.md): this browser's leg
// lives in the bundled simulator, and its control API plays the voice SDK's part:
// POST /simulator/devices/hangup and /simulator/devices/mute, by the device's address.
//
// Audio: before this tab answers or moves a call here, prepare() opens a WebRTC connection
// to the simulator (POST /simulator/media with the device's voice token and the SDP offer,
// all candidates gathered first: no trickle ICE). The simulator attaches it to the leg it
// dials next to this address, and only to that one; the caller's voice plays here and the
// microphone goes back to the caller. A level meter reads the caller's sound (Web Audio
// AnalyserNode), and the output device can be chosen where the browser has setSinkId.

import { VoiceError } from "./voice-error.js";

const SIMULATOR = "/simulator";
const NEEDED = ["POST /simulator/devices/hangup", "POST /simulator/devices/mute"];

async function post(path, body) {
  let response;
  try {
    response = await fetch(SIMULATOR + path, {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body), credentials: "omit", cache: "no-store",
    });
  } catch {
    throw new VoiceError("Could not reach the simulator.");
  }
  if (!response.ok) {
    let message = `The simulator answered ${response.status}.`;
    try {
      message = (await response.json()).error?.message || message;
    } catch {
      // keep the status line
    }
    throw new VoiceError(message);
  }
  return response.json();
}

const GATHERING_MS = 3000;  // the most this tab waits for its ICE candidates before offering

function gathered(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (connection.iceGatheringState !== "complete") return;
      connection.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    connection.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHERING_MS);
  });
}

export class SimulatorVoice {
  // `voiceToken`: () => Promise<{token}>, this device's Access Token (POST /devices/me/voice-token).
  constructor(address, { voiceToken } = {}) {
    this.address = address;
    this.available = true;
    this.reason = "";
    this.voiceToken = voiceToken;
    this.connection = null;
    this.microphone = null;
    this.muted = false;
    this.player = null;
    this.analyser = null;
    this.context = null;
    this.sinkId = "";
    this.canChooseOutput = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;
  }

  hangUp() {
    return post("/devices/hangup", { address: this.address });
  }

  setMuted(muted) {
    this.muted = muted;
    for (const track of this.microphone?.getAudioTracks() || []) track.enabled = !muted;
    return post("/devices/mute", { address: this.address, muted });
  }

  // Ready for the call callpull dials next to this address (this tab's answer or move).
  async prepare() {
    this.release();
    if (!this.voiceToken) throw new VoiceError("This browser has no voice token.");
    const { token } = await this.voiceToken();
    const microphone = await navigator.mediaDevices.getUserMedia({ audio: true, video: false }).catch(() => {
      throw new VoiceError("The microphone is not available: the caller will not hear you.");
    });
    const connection = new RTCPeerConnection({ iceServers: [] });
    this.connection = connection;
    this.microphone = microphone;
    for (const track of microphone.getAudioTracks()) {
      track.enabled = !this.muted;
      connection.addTrack(track, microphone);
    }
    connection.addEventListener("track", (event) => this.play(event.streams[0] || new MediaStream([event.track])));
    connection.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(connection.connectionState) && this.connection === connection) this.release();
    });
    await connection.setLocalDescription(await connection.createOffer());
    await gathered(connection);
    const answer = await post("/media", { address: this.address, access_token: token,
      sdp: connection.localDescription.sdp });
    if (this.connection !== connection) return;
    this.peer = answer.peer;
    await connection.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  play(stream) {
    if (!this.player) {
      this.player = new Audio();
      this.player.autoplay = true;
      if (this.sinkId && this.canChooseOutput) this.player.setSinkId(this.sinkId).catch(() => {});
    }
    this.player.srcObject = stream;
    this.player.play().catch(() => {});  // autoplay refused: the next click plays it
    try {
      this.context = this.context || new AudioContext();
      this.analyser = this.context.createAnalyser();
      this.analyser.fftSize = 1024;
      this.context.createMediaStreamSource(stream).connect(this.analyser);
      this.context.resume().catch(() => {});
    } catch {
      this.analyser = null;  // no Web Audio: no meter
    }
  }

  // The caller's sound here now, 0..1 (RMS of the last 1024 samples); 0 without a call.
  level() {
    if (!this.analyser) return 0;
    const samples = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const sample of samples) sum += sample * sample;
    return Math.sqrt(sum / samples.length);
  }

  get active() {
    return Boolean(this.connection);
  }

  // The audio outputs the browser lets this page choose from ([] where it cannot).
  async outputs() {
    if (!this.canChooseOutput || !navigator.mediaDevices?.enumerateDevices) return [];
    const devices = await navigator.mediaDevices.enumerateDevices();
    return devices.filter((device) => device.kind === "audiooutput")
      .map((device, index) => ({ id: device.deviceId, label: device.label || `Output ${index + 1}` }));
  }

  async setOutput(id) {
    this.sinkId = id;
    if (this.player && this.canChooseOutput) await this.player.setSinkId(id);
  }

  // Stop this tab's audio (the call ended or moved away).
  release() {
    const connection = this.connection;
    this.connection = null;
    this.peer = null;
    connection?.close();
    for (const track of this.microphone?.getTracks() || []) track.stop();
    this.microphone = null;
    if (this.player) this.player.srcObject = null;
    this.analyser = null;
  }
}

// The simulator answers GET /simulator/ with its routes when it is mounted (the embedded
// default); anything else means a real voice provider.
let simulatorPresent = null;

export async function simulatorHere() {
  if (simulatorPresent === null) {
    simulatorPresent = (async () => {
      try {
        const response = await fetch(`${SIMULATOR}/`, { headers: { Accept: "application/json" }, credentials: "omit" });
        if (!response.ok) return false;
        const index = await response.json();
        const routes = new Set((index.routes || []).map((entry) => entry.route));
        return NEEDED.every((route) => routes.has(route));
      } catch {
        return false;
      }
    })();
  }
  return simulatorPresent;
}
