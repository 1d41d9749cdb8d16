"""Call audio over WebRTC (aiortc): the simulated caller speaks, a browser's leg hears it and
answers with its microphone, and the conference routes the sound to whichever leg holds the
call, so a move moves the sound (issue 16; docs/SIMULATOR.md "Call audio").

Signalling is one HTTP exchange, without trickle ICE: a browser tab that is about to answer
(or to press Move here) POSTs its SDP offer with its device's Access Token (checked as the
device registration checks it, tokens.py) and gets the answer; aiortc gathers its candidates
before answering. The tab's `Peer` then waits, unbound, for the call callpull dials for that
answer or move: the first leg to `client:<identity>` created after the offer, once it is in a
conference. A tab never gets the audio of a leg created before it asked, nor of another
address's leg. A peer whose leg ends is closed; one that no leg reached within
PENDING_SECONDS is closed too.

Routing, every 20 ms frame, as a conference mixes:
- a device leg hears the caller (the conference's inbound leg) while both are joined, neither
  is on hold and the conference has started; a muted participant still hears (Twilio's mute
  silences what it says, not what it hears);
- the caller hears a device leg while that leg is joined, not muted and not on hold. What the
  caller hears is recorded per caller leg (`Hearing`): every frame's time, level and source
  leg, and the longest gap between frames with sound (`max_gap_ms`), which is how a move's
  silence is measured.

The caller's voice is sounds/caller.wav (how it was made: sounds/README.md), looped from the
moment the caller is first heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import time
import uuid
import wave
from array import array
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from simulators.telephony.common import SimulatorError

if TYPE_CHECKING:
    from simulators.telephony.conference import Participant
    from simulators.telephony.legs import Leg
    from simulators.telephony.provider import Provider

log = logging.getLogger("simulators.telephony")

VOICE = Path(__file__).parent / "sounds" / "caller.wav"
PTIME = 0.020  # seconds of audio per frame
PENDING_SECONDS = 120.0  # an offer no leg reached by then is closed
SOUND_LEVEL = 0.001  # an RMS level (of full scale) above this is sound, below it silence
MAX_FRAMES = 6000  # frames kept per caller (two minutes of one source)
MAX_PEERS = 200


def _voice() -> tuple[int, bytes]:
    with wave.open(str(VOICE), "rb") as recording:
        if recording.getsampwidth() != 2 or recording.getnchannels() != 1:
            raise ValueError(f"{VOICE} must be 16-bit mono PCM")
        return recording.getframerate(), recording.readframes(recording.getnframes())


def level(frame: AudioFrame) -> float:
    """The RMS level of a frame of 16-bit samples, 0..1 of full scale (every 4th sample)."""
    samples = array("h", bytes(frame.planes[0]))[::4]
    if not samples:
        return 0.0
    return math.sqrt(sum(sample * sample for sample in samples) / len(samples)) / 32768


def _live(participant: Participant | None) -> bool:
    return (participant is not None and participant.current and participant.joined and not participant.hold
            and participant.room.status == "in-progress")


def caller_of(participant: Participant | None) -> Leg | None:
    """The caller (the conference's inbound leg) a device's participant is with, if both are in."""
    if not _live(participant) or participant.leg.direction == "inbound":
        return None
    for other in participant.room.participants:
        if other.leg.direction == "inbound" and _live(other):
            return other.leg
    return None


class Hearing:
    """What one caller leg hears: frames of its device legs' microphones, with their levels."""

    def __init__(self, call_sid: str):
        self.call_sid = call_sid
        self.started = time.monotonic()
        self.frames: deque[tuple[float, float, str]] = deque(maxlen=MAX_FRAMES)  # (t_ms, level, leg sid)
        self.count = 0
        self.sound = 0
        self.first_sound_ms: float | None = None
        self.last_sound_ms: float | None = None
        self.max_gap_ms = 0.0
        self.max_gap_at_ms: float | None = None
        self.sources: dict[str, dict] = {}

    def add(self, leg_sid: str, value: float) -> None:
        t_ms = round((time.monotonic() - self.started) * 1000, 1)
        self.frames.append((t_ms, round(value, 5), leg_sid))
        self.count += 1
        source = self.sources.setdefault(leg_sid, {"leg": leg_sid, "frames": 0, "sound_frames": 0,
                                                   "first_sound_ms": None, "last_sound_ms": None})
        source["frames"] += 1
        if value <= SOUND_LEVEL:
            return
        self.sound += 1
        source["sound_frames"] += 1
        if source["first_sound_ms"] is None:
            source["first_sound_ms"] = t_ms
        source["last_sound_ms"] = t_ms
        if self.last_sound_ms is not None and t_ms - self.last_sound_ms > self.max_gap_ms:
            self.max_gap_ms = round(t_ms - self.last_sound_ms, 1)
            self.max_gap_at_ms = t_ms
        if self.first_sound_ms is None:
            self.first_sound_ms = t_ms
        self.last_sound_ms = t_ms

    def as_json(self, *, frames: bool = True) -> dict:
        body = {
            "call_sid": self.call_sid, "frames_received": self.count, "sound_frames": self.sound,
            "first_sound_ms": self.first_sound_ms, "last_sound_ms": self.last_sound_ms,
            "max_gap_ms": self.max_gap_ms, "max_gap_at_ms": self.max_gap_at_ms,
            "sound_level": SOUND_LEVEL, "sources": list(self.sources.values()),
        }
        if frames:
            body["frames"] = [{"t_ms": t_ms, "level": value, "leg": leg} for t_ms, value, leg in self.frames]
        return body


class CallerVoice(MediaStreamTrack):
    """What a peer's browser hears: the caller's voice while its leg is routed, else silence."""

    kind = "audio"

    def __init__(self, media: MediaEngine, peer: Peer):
        super().__init__()
        self.media = media
        self.peer = peer
        self.rate = media.rate
        self.samples = int(self.rate * PTIME)
        self.silence = bytes(self.samples * 2)
        self.start: float | None = None
        self.timestamp = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.timestamp += self.samples
            wait = self.start + self.timestamp / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        caller = self.media.route(self.peer)
        payload = self.silence
        if caller is not None:
            payload = self.media.voice_at(caller.sid, self.samples)
            self.peer.voice_frames += 1
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(payload)
        frame.sample_rate = self.rate
        frame.pts = self.timestamp
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


class Peer:
    """One browser tab's WebRTC connection, and the leg it carries once bound."""

    def __init__(self, address: str, connection: RTCPeerConnection):
        self.id = "PE" + uuid.uuid4().hex
        self.address = address
        self.connection = connection
        self.created_at = time.monotonic()
        self.asked_at = datetime.now(UTC)
        self.leg: Leg | None = None
        self.bound_ms: float | None = None
        self.closed = False
        self.voice_frames = 0  # frames of the caller's voice sent to the tab
        self.mic_frames = 0  # frames received from the tab's microphone
        self.mic_to_caller = 0  # of which the caller heard
        self.mic_level = 0.0
        self.task: asyncio.Task | None = None

    def as_json(self) -> dict:
        return {
            "id": self.id, "address": self.address, "call_sid": self.leg.sid if self.leg else None,
            "state": "closed" if self.closed else "bound" if self.leg else "waiting",
            "bound_after_ms": self.bound_ms, "connection": self.connection.connectionState,
            "voice_frames_sent": self.voice_frames, "microphone_frames": self.mic_frames,
            "microphone_frames_heard": self.mic_to_caller, "microphone_level": round(self.mic_level, 5),
        }


class MediaEngine:
    """Every peer, and what every caller heard."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self.rate, self.voice = _voice()
        self.peers: dict[str, Peer] = {}
        self.hearings: dict[str, Hearing] = {}
        self.voice_started: dict[str, float] = {}

    # -- signalling --------------------------------------------------------------------

    async def offer(self, address: str, sdp: str) -> tuple[Peer, str]:
        """Answer a tab's offer; its peer waits for the next leg to `address`."""
        if not isinstance(sdp, str) or "m=audio" not in sdp:
            raise SimulatorError(400, "invalid_input", "sdp must be an SDP offer with an audio section.")
        self._forget()
        if sum(not peer.closed for peer in self.peers.values()) >= MAX_PEERS:
            raise SimulatorError(429, "too_many_peers", "Too many open media connections.")
        connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer = Peer(address, connection)
        connection.addTrack(CallerVoice(self, peer))

        @connection.on("track")
        def on_track(track):
            if track.kind == "audio":
                peer.task = asyncio.create_task(self._listen(peer, track))

        @connection.on("connectionstatechange")
        async def on_state():
            if connection.connectionState in ("failed", "closed"):
                await self.close(peer)

        try:
            await connection.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await connection.setLocalDescription(await connection.createAnswer())
        except ValueError as exc:
            await connection.close()
            raise SimulatorError(400, "invalid_input", f"The SDP offer was refused: {exc}") from None
        self.peers[peer.id] = peer
        return peer, connection.localDescription.sdp

    async def _listen(self, peer: Peer, track) -> None:
        """The tab's microphone: every frame goes to the caller while the leg is routed."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            peer.mic_frames += 1
            peer.mic_level = level(frame)
            caller = self.route(peer)
            if caller is not None and peer.leg.participant is not None and not peer.leg.participant.muted:
                peer.mic_to_caller += 1
                self.hearing(caller.sid).add(peer.leg.sid, peer.mic_level)

    # -- routing -----------------------------------------------------------------------

    def route(self, peer: Peer) -> Leg | None:
        """The caller leg `peer` is talking with now, binding it to its leg first if due."""
        if peer.closed:
            return None
        if peer.leg is None:
            self._bind(peer)
            if peer.leg is None:
                if time.monotonic() - peer.created_at > PENDING_SECONDS:
                    asyncio.ensure_future(self.close(peer))
                return None
        if peer.leg.ended:
            asyncio.ensure_future(self.close(peer))
            return None
        return caller_of(peer.leg.participant)

    def _bind(self, peer: Peer) -> None:
        taken = {other.leg.sid for other in self.peers.values() if other.leg is not None and not other.closed}
        for leg in self.provider.device_legs(peer.address):
            if leg.sid in taken or leg.participant is None or not leg.participant.joined:
                continue
            # Only a leg dialled after the tab asked: the call callpull dialled for its answer or move.
            if leg.created_at < peer.asked_at:
                continue
            peer.leg = leg
            peer.bound_ms = round((time.monotonic() - peer.created_at) * 1000, 1)
            leg.record("media_connected", peer=peer.id)
            return

    def voice_at(self, call_sid: str, samples: int) -> bytes:
        """The next `samples` of the caller's voice (looped), as the caller speaks them now."""
        started = self.voice_started.setdefault(call_sid, time.monotonic())
        total = len(self.voice) // 2
        start = int((time.monotonic() - started) * self.rate) % total
        end = start + samples
        if end <= total:
            return self.voice[start * 2:end * 2]
        return self.voice[start * 2:] + self.voice[:(end - total) * 2]

    def hearing(self, call_sid: str) -> Hearing:
        hearing = self.hearings.get(call_sid)
        if hearing is None:
            hearing = self.hearings[call_sid] = Hearing(call_sid)
        return hearing

    # -- state -------------------------------------------------------------------------

    def stats(self, call_sid: str) -> dict:
        """The caller's record (a caller leg's sid) or a device leg's peers (a device leg's sid)."""
        self.provider.get(call_sid)  # 404 for an unknown call
        hearing = self.hearings.get(call_sid)
        return {
            "call_sid": call_sid,
            "heard": hearing.as_json() if hearing else None,
            "peers": [peer.as_json() for peer in self.peers.values()
                      if peer.leg is not None and (peer.leg.sid == call_sid or caller_of_sid(peer) == call_sid)],
        }

    def summary(self) -> dict:
        return {"peers": [peer.as_json() for peer in self.peers.values()],
                "heard": [hearing.as_json(frames=False) for hearing in self.hearings.values()]}

    async def close(self, peer: Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        if peer.leg is not None and not peer.leg.ended:
            peer.leg.record("media_closed", peer=peer.id)
        with contextlib.suppress(Exception):  # a connection that failed may fail to close again
            await peer.connection.close()

    def _forget(self) -> None:
        """Closed peers beyond the newest MAX_PEERS are forgotten (a long-running dev server)."""
        closed = [key for key, peer in self.peers.items() if peer.closed]
        for key in closed[:max(0, len(self.peers) - MAX_PEERS)]:
            del self.peers[key]
        for sid in [sid for sid in self.hearings if sid not in self.provider.calls]:
            del self.hearings[sid]
            self.voice_started.pop(sid, None)

    async def reset(self) -> None:
        for peer in list(self.peers.values()):
            await self.close(peer)
        self.peers.clear()
        self.hearings.clear()
        self.voice_started.clear()


def caller_of_sid(peer: Peer) -> str | None:
    """The caller leg a bound peer's leg was last in a conference with."""
    for participant in reversed(peer.leg.participations):
        for other in participant.room.participants:
            if other.leg.direction == "inbound":
                return other.leg.sid
    return None
