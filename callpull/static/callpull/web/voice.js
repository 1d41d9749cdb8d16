import { VoiceError } from "./voice-error.js";
import { SimulatorVoice, simulatorHere } from "./voice-sim.js";
import { twilioVoice } from "./voice-twilio.js";

// The voice client: what this browser does with its own leg of a call, locally, as a
// device's voice SDK would (the provider is not asked): hang up and mute.
//
// Two implementations behind one interface ({available, reason, address, hangUp(), setMuted(muted)};
// with audio also prepare(), release(), level(), outputs(), setOutput(id), canChooseOutput):
// - SimulatorVoice (voice-sim.js): in the embedded default the browser's leg lives in the
//   bundled simulator (docs/SIMULATOR.md), which also carries its audio over WebRTC.
// - TwilioVoice (voice-twilio.js): with Twilio (the server is not the embedded simulator: the
//   page says so in <html data-voice="twilio"> and loads the vendored Voice JS SDK), the
//   browser's leg is a call to its `client` identity through Twilio's Voice JavaScript SDK.
// - UnavailableVoice: neither is at hand (no simulator here, or the SDK did not load); the
//   page says so instead of offering the buttons.

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

const WITHOUT_SIMULATOR = "Hang up and mute are not available without the simulator, and it is not reachable from this browser.";
const WITHOUT_SDK = "Hang up and mute are not available: the Twilio Voice SDK did not load in this browser.";

// The voice client of the device reached at `connect` ({type, address}).
// `options.voiceToken`: () => Promise<{token, identity, expires_at}>, the device's Access Token.
export async function voiceClient(connect, options = {}) {
  if (!connect || connect.type !== "client") return new UnavailableVoice("This browser has no voice address.");
  if (document.documentElement.dataset.voice === "twilio") {
    return globalThis.Twilio?.Device ? twilioVoice(connect.address, options)
      : new UnavailableVoice(WITHOUT_SDK, connect.address);
  }
  return (await simulatorHere()) ? new SimulatorVoice(connect.address, options)
    : new UnavailableVoice(WITHOUT_SIMULATOR, connect.address);
}
