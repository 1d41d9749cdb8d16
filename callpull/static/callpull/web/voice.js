// The voice client: what this browser does with its own leg of a call, locally, as a
// device's voice SDK would (the provider is not asked): hang up and mute.
//
// Two implementations behind one interface ({available, reason, hangUp(), setMuted(muted)}):
// - SimulatorVoice: in the embedded default the browser's leg lives in the bundled
//   simulator (docs/SIMULATOR.md), and its control API plays the SDK's part:
//   POST /simulator/devices/hangup and /simulator/devices/mute, by the device's address.
// - UnavailableVoice: with a real voice provider the browser would need the Twilio Voice
//   JavaScript SDK (issue 16); until then the page says so instead of offering the buttons.

const SIMULATOR = "/simulator";
const NEEDED = ["POST /simulator/devices/hangup", "POST /simulator/devices/mute"];

export class VoiceError extends Error {}

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

export class SimulatorVoice {
  constructor(address) {
    this.address = address;
    this.available = true;
    this.reason = "";
  }

  hangUp() {
    return post("/devices/hangup", { address: this.address });
  }

  setMuted(muted) {
    return post("/devices/mute", { address: this.address, muted });
  }
}

export class UnavailableVoice {
  constructor(reason, address = null) {
    this.address = address;
    this.available = false;
    this.reason = reason;
  }

  hangUp() {
    return Promise.reject(new VoiceError(this.reason));
  }

  setMuted() {
    return Promise.reject(new VoiceError(this.reason));
  }
}

const WITHOUT_SIMULATOR = "Hang up and mute are not available without the simulator (this browser has no voice SDK yet).";

// The simulator answers GET /simulator/ with its routes when it is mounted (the embedded
// default); anything else means a real voice provider.
let simulatorPresent = null;

async function simulatorHere() {
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

// The voice client of the device reached at `connect` ({type, address}).
export async function voiceClient(connect) {
  if (!connect || connect.type !== "client") return new UnavailableVoice("This browser has no voice address.");
  return (await simulatorHere()) ? new SimulatorVoice(connect.address)
    : new UnavailableVoice(WITHOUT_SIMULATOR, connect.address);
}
