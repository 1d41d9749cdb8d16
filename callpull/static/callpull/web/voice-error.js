// The error a voice client (voice.js and its implementations, voice-sim.js and voice-twilio.js)
// fails with: its message is said to the person as it is.
export class VoiceError extends Error {}
