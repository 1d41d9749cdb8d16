"""Conferences, as Twilio runs them: <Dial><Conference> and the Participants REST API.

A conference (`Room`, Twilio's Conference resource, `CF` + 32 hex) is created by
its first participant, or by the Participants API naming an unknown friendly
name. It *starts* (status `in-progress`, `conference-start`) once at least two
participants are in it and one of them has startConferenceOnEnter=true; until
then those in it wait and "hear" the wait audio (waitUrl). It ends (`completed`,
`conference-end`) when a participant with endConferenceOnExit=true leaves, when
its last participant leaves, or by REST `Status=completed`. Every participant
still in it then leaves too, and its call goes on after its <Dial> (the Dial
action when there is one; else the next verb, and a call with nothing left
hangs up). A participant created by the REST API has no TwiML: its call ends
when it leaves.

Each call in a conference is one `Participant` (a call that leaves and joins
again is a new one). Every change is recorded on the conference's `events`, on
the call's `events` (conference_joined, conference_started, wait_audio,
wait_ended, muted, unmuted, hold, unhold, conference_left), and sent to the
conference's statusCallback when its statusCallbackEvent asked for it; those
callbacks are sent in order, one queue per conference.

`ConferenceEngine` is a part of `provider.Provider` (which inherits it): it uses
the provider's legs, callbacks and TwiML engine.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from simulators.telephony import twiml
from simulators.telephony.common import (
    API_VERSION,
    CONTINUE,
    STOP,
    Callback,
    Fetch,
    Inline,
    SimulatorError,
    iso,
    new_conference_sid,
    rfc2822,
    wait_any,
)

if TYPE_CHECKING:
    from simulators.telephony.legs import Leg

# Twilio's default wait music (a TwiML playlist); the simulator never fetches it.
DEFAULT_WAIT_URL = "https://twimlets.com/holdmusic?Bucket=com.twilio.music.classical"
AUDIO_EXTENSIONS = (".wav", ".mp3", ".ulaw", ".ul", ".aiff", ".aif", ".gsm", ".ogg", ".oga", ".opus", ".m4a")
# A waitUrl document that <Redirect>s to itself would loop for ever in no time: stop after this many.
MAX_WAIT_REDIRECTS = 3
MAX_CONFERENCES = 2000
# StatusCallbackEvent sent → the statusCallbackEvent word that asks for it.
EVENT_FILTER = {
    "conference-start": "start", "conference-end": "end", "participant-join": "join",
    "participant-leave": "leave", "participant-mute": "mute", "participant-unmute": "mute",
    "participant-hold": "hold", "participant-unhold": "hold",
}
REASONS_ENDED = {
    "conference-ended-via-api": "Conference ended via API",
    "participant-with-end-conference-on-exit-left": "Participant with endConferenceOnExit left the conference",
    "participant-with-end-conference-on-exit-kicked": "Participant with endConferenceOnExit was removed via API",
    "last-participant-left": "The last participant left the conference",
    "last-participant-kicked": "The last participant was removed via API",
}
SID = re.compile(r"^CF[0-9a-f]{32}$")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def is_audio(url: str) -> bool:
    """A waitUrl the simulator "plays" without fetching it (Twilio plays MP3 or WAV as is)."""
    return urlsplit(url).path.lower().endswith(AUDIO_EXTENSIONS)


class Participant:
    """One call's stay in one conference."""

    def __init__(self, room: Room, leg: Leg, *, source: str, label: str | None = None, muted: bool = False,
                 beep: str = "true", start_conference_on_enter: bool = True, end_conference_on_exit: bool = False,
                 wait_url: str | None = None, wait_method: str = "POST"):
        now = datetime.now(UTC)
        self.room = room
        self.leg = leg
        self.source = source  # twiml: <Dial><Conference>; api: the Participants REST API
        self.label = label
        self.muted = muted
        self.hold = False
        self.beep = beep
        self.start_conference_on_enter = start_conference_on_enter
        self.end_conference_on_exit = end_conference_on_exit
        self.wait_url = wait_url  # None: Twilio's default music; "": silence
        self.wait_method = wait_method
        self.status = "queued"  # queued, connecting, ringing, connected, complete, failed (Twilio's values)
        self.created_at = self.updated_at = now
        self.joined_at: datetime | None = None
        self.left_at: datetime | None = None
        self.reason_left: str | None = None
        self.call_status_at_leave: str | None = None
        self.waiting = False  # in the conference before it started: hears the wait audio
        self.wait_over = asyncio.Event()
        room.participants.append(self)
        leg.participant = self
        leg.participations.append(self)

    @property
    def current(self) -> bool:
        """Connecting to or in the conference (what Twilio's Participants resource lists)."""
        return self.left_at is None

    @property
    def joined(self) -> bool:
        return self.joined_at is not None

    def summary(self) -> dict:
        return {
            "conference_sid": self.room.sid, "friendly_name": self.room.friendly_name, "call_sid": self.leg.sid,
            "label": self.label, "source": self.source, "status": self.status, "muted": self.muted,
            "hold": self.hold, "start_conference_on_enter": self.start_conference_on_enter,
            "end_conference_on_exit": self.end_conference_on_exit, "beep": self.beep, "wait_url": self.wait_url,
            "created_at": iso(self.created_at), "joined_at": iso(self.joined_at), "left_at": iso(self.left_at),
            "reason_left": self.reason_left, "call_status_at_leave": self.call_status_at_leave,
        }

    def as_resource(self) -> dict:
        """Twilio's Participant resource."""
        return {
            "account_sid": self.room.account_sid, "call_sid": self.leg.sid, "label": self.label,
            "call_sid_to_coach": None, "coaching": False, "conference_sid": self.room.sid,
            "date_created": rfc2822(self.created_at), "date_updated": rfc2822(self.updated_at),
            "end_conference_on_exit": self.end_conference_on_exit, "muted": self.muted, "hold": self.hold,
            "start_conference_on_enter": self.start_conference_on_enter, "status": self.status,
            "queue_time": "0", "uri": f"{self.room.uri_base}/Participants/{self.leg.sid}.json",
        }


class Room:
    """One conference (Twilio's Conference resource)."""

    def __init__(self, *, friendly_name: str, account_sid: str, callback: Callback | None):
        now = datetime.now(UTC)
        self.sid = new_conference_sid()
        self.account_sid = account_sid
        self.friendly_name = friendly_name
        self.status = "init"  # init, in-progress, completed
        self.created_at = self.updated_at = now
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.reason_ended: str | None = None
        self.call_sid_ending: str | None = None
        self.callback = callback  # set by whoever created it; later ones are ignored, as with Twilio
        self.participants: list[Participant] = []
        self.sequence = 0
        self.outbox: asyncio.Task | None = None
        self.events: list[dict] = []
        self._started = time.monotonic()

    @property
    def uri_base(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Conferences/{self.sid}"

    @property
    def ended(self) -> bool:
        return self.status == "completed"

    def current(self) -> list[Participant]:
        return [participant for participant in self.participants if participant.current]

    def connected(self) -> list[Participant]:
        return [participant for participant in self.participants if participant.current and participant.joined]

    def find(self, key: str) -> Participant | None:
        """A current participant by its call sid or its label."""
        for participant in self.current():
            if key in (participant.leg.sid, participant.label):
                return participant
        return None

    def record(self, event: str, **detail) -> dict:
        entry = {"t_ms": round((time.monotonic() - self._started) * 1000, 1),
                 "at": iso(datetime.now(UTC)), "event": event, **detail}
        self.events.append(entry)
        return entry

    def as_resource(self) -> dict:
        """Twilio's Conference resource."""
        return {
            "account_sid": self.account_sid, "api_version": API_VERSION,
            "call_sid_ending_conference": self.call_sid_ending, "date_created": rfc2822(self.created_at),
            "date_updated": rfc2822(self.updated_at), "friendly_name": self.friendly_name,
            "reason_conference_ended": self.reason_ended, "region": "us1", "sid": self.sid, "status": self.status,
            "subresource_uris": {"participants": f"{self.uri_base}/Participants.json",
                                 "recordings": f"{self.uri_base}/Recordings.json"},
            "uri": f"{self.uri_base}.json",
        }

    def as_json(self) -> dict:
        """The control API's record: every participant there has been, and every event."""
        return {
            "sid": self.sid, "friendly_name": self.friendly_name, "status": self.status,
            "created_at": iso(self.created_at), "started_at": iso(self.started_at), "ended_at": iso(self.ended_at),
            "reason_conference_ended": self.reason_ended, "call_sid_ending_conference": self.call_sid_ending,
            "status_callback": ({"url": self.callback.url, "method": self.callback.method,
                                 "events": list(self.callback.events)} if self.callback else None),
            "participants": [participant.summary() for participant in self.participants],
            "current_participants": [participant.leg.sid for participant in self.current()],
            "events": list(self.events),
        }


class ConferenceEngine:
    """The provider's conferences. Mixed into `provider.Provider`."""

    def __init__(self):
        self.conferences: dict[str, Room] = {}

    # -- finding and creating ------------------------------------------------------

    def conference(self, key: str) -> Room:
        """A conference by sid, or by friendly name (the live one, else the latest)."""
        room = self.conferences.get(key) or self._active_room(key)
        if room is None:
            named = [room for room in self.conferences.values() if room.friendly_name == key]
            room = named[-1] if named else None
        if room is None:
            raise SimulatorError(404, "not_found", f"No conference {key}.")
        return room

    def _active_room(self, name: str) -> Room | None:
        for room in self.conferences.values():
            if room.friendly_name == name and not room.ended:
                return room
        return None

    def _room_for(self, name: str, callback: Callback | None) -> Room:
        room = self._active_room(name)
        if room is not None:
            return room
        if len(self.conferences) >= MAX_CONFERENCES:
            ended = [sid for sid, old in self.conferences.items() if old.ended]
            for sid in ended[:len(self.conferences) - MAX_CONFERENCES + 1]:
                del self.conferences[sid]
        room = Room(friendly_name=name, account_sid=self.config.account_sid, callback=callback)
        self.conferences[room.sid] = room
        room.record("created", status_callback=callback.url if callback else None)
        return room

    # -- <Dial><Conference> ----------------------------------------------------------

    async def _dial_conference(self, leg: Leg, dial: twiml.Dial, url: str | None):
        noun = dial.conference
        self._answer(leg)
        callback = None
        if noun.status_callback:
            callback = Callback(self._resolve(url, noun.status_callback), noun.status_callback_method,
                                noun.status_callback_events)
        leg.record("dial", to=[noun.to], action=dial.action, conference=noun.name)
        existing = self._active_room(noun.name)
        if noun.participant_label and existing is not None and existing.find(noun.participant_label):
            # Twilio: error 16025, the call is not added and goes on with the next verb.
            leg.record("error", message=f"16025: a participant labelled {noun.participant_label!r} is already "
                                        f"in conference {noun.name!r}; the call goes on after the <Dial>")
            return CONTINUE
        room = self._room_for(noun.name, callback)
        wait_url = noun.wait_url if noun.wait_url is None or noun.wait_url == "" else self._resolve(url, noun.wait_url)
        participant = Participant(
            room, leg, source="twiml", label=noun.participant_label, muted=noun.muted, beep=noun.beep,
            start_conference_on_enter=noun.start_conference_on_enter,
            end_conference_on_exit=noun.end_conference_on_exit, wait_url=wait_url, wait_method=noun.wait_method)
        self._join(participant)
        await self._attend(leg, participant)
        leg.record("dial_ended", dial_call_status="answered", conference_sid=room.sid,
                   reason_left=participant.reason_left)

        if leg.redirect is not None and not leg.hangup_by:
            return CONTINUE  # a REST update took the call out: no action request, as with Twilio
        if dial.action:
            # After a conference Twilio sends DialCallStatus=answered, without DialCallSid or DialCallDuration.
            extra: tuple[tuple[str, str], ...] = (("DialCallStatus", "answered"),)
            if leg.hangup_by:
                extra += (("CallStatus", "completed"),)
            request = Fetch(self._resolve(url, dial.action), dial.method, label="dial action", extra=extra)
            document = await self._fetch(leg, request)
            if leg.hangup_by:
                return STOP
            if leg.redirect is not None:
                return CONTINUE
            if document is None:
                return self._application_error(leg)
            return Inline(document, request.url)
        return STOP if leg.hangup_by else CONTINUE

    async def _attend(self, leg: Leg, participant: Participant, hangup_after: float | None = None) -> None:
        """Until the participant is out of the conference: hung up, moved by REST, removed, or the
        conference ended. `hangup_after`: a simulated device hangs up by itself that long after joining."""
        loop = asyncio.get_running_loop()
        deadline = None if hangup_after is None else loop.time() + hangup_after
        while participant.current:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self._hang_up(leg, "device")
                break
            await wait_any([leg.wake], remaining)
            if not participant.current:
                break
            if leg.hangup_by or leg.redirect is not None:  # left already, normally; make sure
                self._leave(participant, "participant_hung_up" if leg.hangup_by else "participant_updated_via_api",
                            call_status="completed" if leg.hangup_by else None)
                break
            leg.wake.clear()
        if not leg.hangup_by and leg.redirect is None:
            leg.wake.clear()  # set by whoever took it out; nothing else is pending
        leg.activity = leg.status

    # -- the Participants REST API ---------------------------------------------------------

    def add_participant(self, key: str, *, from_: str, to: str, label: str | None, muted: bool, beep: str,
                        start_conference_on_enter: bool, end_conference_on_exit: bool, timeout: float,
                        callback: Callback | None, conference_callback: Callback | None,
                        wait_url: str | None, wait_method: str) -> Participant:
        """POST …/Conferences/{sid or name}/Participants.json: call `to`; when it answers it joins."""
        if SID.match(key):
            room = self.conferences.get(key)
            if room is None:
                raise SimulatorError(404, "20404", f"The requested resource Conference {key} was not found")
            if room.ended:
                raise SimulatorError(400, "21220", f"Conference {key} has ended.")
        else:
            room = self._active_room(key)
        if label and room is not None and room.find(label):
            raise SimulatorError(400, "16025", f"A participant labelled {label!r} is already in the conference.")
        room = room or self._room_for(key, conference_callback)
        to, parameters = twiml.client_parameters(to)  # the device is rung at its identity, told the parameters
        leg = self._new_leg(direction="outbound-api", from_=from_, to=to, status="queued")
        leg.parameters = parameters
        leg.callback = callback
        leg.record("created", **{"from": from_}, to=to, conference_sid=room.sid, friendly_name=room.friendly_name,
                   label=label, **({"parameters": parameters} if parameters else {}))
        participant = Participant(room, leg, source="api", label=label, muted=muted, beep=beep,
                                  start_conference_on_enter=start_conference_on_enter,
                                  end_conference_on_exit=end_conference_on_exit, wait_url=wait_url,
                                  wait_method=wait_method)
        room.record("participant-added", call_sid=leg.sid, to=to, label=label)
        leg.runner = self.spawn(self._run_participant(leg, participant, timeout))
        return participant

    async def _run_participant(self, leg: Leg, participant: Participant, timeout: float) -> None:
        participant.status = "connecting"
        self._progress(leg, "initiated")
        self._set_status(leg, "ringing")
        leg.record("ringing")
        self._progress(leg, "ringing")
        if participant.current:
            participant.status = "ringing"
        outcome = await self._ring(leg, timeout)
        if outcome != "answered" or not participant.current:
            self._end(leg, outcome if outcome != "answered" else "canceled", reason="not answered")
            self._leave(participant, "participant_add_failed")
            await self._flush(leg)
            return
        self._answer(leg)
        if leg.redirect is not None and not leg.hangup_by:  # updated by REST while it rang
            self._leave(participant, "participant_updated_via_api")
            await self._run(leg, self._take_interrupt(leg))
            return
        self._join(participant)
        await self._attend(leg, participant, self.behaviour_for(leg.to).hangup_after)
        if leg.redirect is not None and not leg.hangup_by:
            await self._run(leg, self._take_interrupt(leg))
            return
        if leg.hangup_by:
            self._finish(leg)
        else:  # no TwiML follows a participant created by REST: its call ends
            leg.hangup_by = "api" if participant.reason_left == "participant_updated_via_api" else "conference"
            self._end(leg, "completed", reason=f"left conference {participant.room.friendly_name!r} "
                                               f"({participant.reason_left}); no TwiML follows")
        await self._flush(leg)

    def update_participant(self, participant: Participant, *, muted: bool | None = None, hold: bool | None = None,
                           hold_url: str | None = None, end_conference_on_exit: bool | None = None) -> Participant:
        """POST …/Participants/{sid or label}.json: Muted, Hold (HoldUrl), EndConferenceOnExit."""
        room, leg = participant.room, participant.leg
        participant.updated_at = datetime.now(UTC)
        if muted is not None and muted != participant.muted:
            participant.muted = muted
            leg.record("muted" if muted else "unmuted", conference_sid=room.sid)
            self._conference_event(room, "participant-mute" if muted else "participant-unmute", participant)
        if hold is not None and hold != participant.hold:
            participant.hold = hold
            if hold:
                leg.record("hold", conference_sid=room.sid, hold_url=hold_url)
            else:
                leg.record("unhold", conference_sid=room.sid)
            if participant.joined:
                leg.activity = "conference-hold" if hold else self._conference_activity(participant)
            self._conference_event(room, "participant-hold" if hold else "participant-unhold", participant)
        if end_conference_on_exit is not None:
            participant.end_conference_on_exit = end_conference_on_exit
        return participant

    def remove_participant(self, participant: Participant) -> None:
        """DELETE …/Participants/{sid or label}.json: out of the conference. A call still ringing is
        canceled; a participant created by REST then hangs up; one from TwiML goes on after its <Dial>."""
        joined = participant.joined
        self._leave(participant, "participant_updated_via_api", call_status=None if joined else "canceled",
                    kicked=True)
        if not joined:
            self._hang_up(participant.leg, "api")

    def end_conference(self, room: Room) -> Room:
        """POST …/Conferences/{sid}.json Status=completed."""
        self._end_conference(room, "conference-ended-via-api")
        return room

    # -- the lifecycle -------------------------------------------------------------------------

    def _conference_activity(self, participant: Participant) -> str:
        return "conference-waiting" if participant.waiting else "conference"

    def _join(self, participant: Participant) -> None:
        room, leg = participant.room, participant.leg
        participant.status = "connected"
        participant.joined_at = participant.updated_at = datetime.now(UTC)
        leg.record("conference_joined", conference_sid=room.sid, friendly_name=room.friendly_name,
                   label=participant.label, muted=participant.muted,
                   start_conference_on_enter=participant.start_conference_on_enter,
                   end_conference_on_exit=participant.end_conference_on_exit, conference_status=room.status)
        self._conference_event(room, "participant-join", participant)
        if room.status == "init":
            connected = room.connected()
            if len(connected) >= 2 and any(other.start_conference_on_enter for other in connected):
                self._start(room)
            else:
                participant.waiting = True
                self.spawn(self._wait_audio(participant))
        leg.activity = self._conference_activity(participant)

    def _start(self, room: Room) -> None:
        room.status = "in-progress"
        room.started_at = room.updated_at = datetime.now(UTC)
        for participant in room.connected():
            participant.leg.record("conference_started", conference_sid=room.sid)
            self._stop_waiting(participant, "conference started")
            if not participant.hold:
                participant.leg.activity = "conference"
        self._conference_event(room, "conference-start")

    def _stop_waiting(self, participant: Participant, reason: str) -> None:
        if participant.waiting:
            participant.waiting = False
            participant.wait_over.set()
            participant.leg.record("wait_ended", conference_sid=participant.room.sid, reason=reason)

    def _leave(self, participant: Participant, reason: str, *, call_status: str | None = None,
               kicked: bool = False) -> None:
        """The participant is out (ReasonParticipantLeft `reason`); the conference may end with it."""
        if not participant.current:
            return
        room, leg = participant.room, participant.leg
        joined = participant.joined
        participant.left_at = participant.updated_at = datetime.now(UTC)
        participant.status = "complete" if joined else "failed"
        participant.reason_left = reason
        participant.call_status_at_leave = call_status or leg.status
        self._stop_waiting(participant, "left the conference")
        if leg.participant is participant:
            leg.participant = None
        leg.activity = leg.status
        leg.record("conference_left", conference_sid=room.sid, friendly_name=room.friendly_name,
                   label=participant.label, reason=reason, joined=joined)
        self._conference_event(room, "participant-leave", participant, ReasonParticipantLeft=reason,
                               ParticipantCallStatus=participant.call_status_at_leave)
        leg.wake.set()
        if room.ended:
            return
        how = "kicked" if kicked else "left"
        if joined and participant.end_conference_on_exit:
            self._end_conference(room, f"participant-with-end-conference-on-exit-{how}", participant)
        elif not room.current():
            self._end_conference(room, f"last-participant-{how}", participant)

    def _end_conference(self, room: Room, reason: str, ending: Participant | None = None) -> None:
        if room.ended:
            return
        room.status = "completed"
        room.ended_at = room.updated_at = datetime.now(UTC)
        room.reason_ended = reason
        room.call_sid_ending = ending.leg.sid if ending else None
        why = "conference_ended_via_api" if reason == "conference-ended-via-api" else "moderator_ended_conference"
        for participant in room.current():
            joined = participant.joined
            self._leave(participant, why, call_status=None if joined else "canceled")
            if not joined:
                self._hang_up(participant.leg, "api")  # still ringing: canceled
        extra = {"ReasonConferenceEnded": reason, "Reason": REASONS_ENDED.get(reason, reason)}
        if ending is not None:
            extra["CallSidEndingConference"] = ending.leg.sid
            if ending.label:
                extra["ParticipantLabelEndingConference"] = ending.label
        self._conference_event(room, "conference-end", **extra)

    def _conference_event(self, room: Room, event: str, participant: Participant | None = None, **extra) -> None:
        """Record `event` on the conference and send it to its statusCallback if asked for."""
        detail = {"call_sid": participant.leg.sid, "label": participant.label} if participant else {}
        for name, key in (("ReasonParticipantLeft", "reason"), ("ReasonConferenceEnded", "reason"),
                          ("CallSidEndingConference", "call_sid_ending_conference")):
            if name in extra:
                detail[key] = extra[name]
        room.record(event, **detail)
        callback = room.callback
        if callback is None or EVENT_FILTER[event] not in callback.events:
            return
        room.sequence += 1
        params = {
            "AccountSid": room.account_sid, "ConferenceSid": room.sid, "FriendlyName": room.friendly_name,
            "StatusCallbackEvent": event, "SequenceNumber": str(room.sequence),
            "Timestamp": rfc2822(datetime.now(UTC)),
        }
        if participant is not None:
            params |= {
                "CallSid": participant.leg.sid, "Muted": _flag(participant.muted), "Hold": _flag(participant.hold),
                "Coaching": "false", "EndConferenceOnExit": _flag(participant.end_conference_on_exit),
                "StartConferenceOnEnter": _flag(participant.start_conference_on_enter),
            }
            if participant.label:
                params["ParticipantLabel"] = participant.label
        params |= extra
        self._enqueue(room, Fetch(callback.url, callback.method, label=f"conference callback: {event}"), params)

    # -- what a waiting participant hears ---------------------------------------------------------

    async def _wait_audio(self, participant: Participant) -> None:
        """The wait audio, while the conference has not started. Audio files are "played" by name,
        never fetched; a TwiML waitUrl is fetched and its <Say>, <Play>, <Pause>, <Redirect> followed."""
        leg, room = participant.leg, participant.room
        url = participant.wait_url
        if url == "":
            leg.record("wait_audio", conference_sid=room.sid, url=None, silence=True)
            return
        if url is None:
            leg.record("wait_audio", conference_sid=room.sid, url=DEFAULT_WAIT_URL, default=True)
            return
        if is_audio(url):
            leg.record("wait_audio", conference_sid=room.sid, url=url)
            return
        request: Fetch | None = Fetch(url, participant.wait_method, label="wait url")
        redirects = 0
        while request is not None and participant.waiting:
            sent = await self.outbound.send(request.url, request.method, leg.params())
            leg.record("webhook", label="wait url", twiml=sent.body, **sent.as_json())
            document = self._document(leg, sent) if participant.waiting else None
            base, request = request.url, None
            for verb in document.verbs if document else ():
                if not participant.waiting:
                    return
                match verb:
                    case twiml.Say(text=text):
                        leg.record("say", text=text, during="wait")
                    case twiml.Play(url=media, loop=loop):
                        leg.record("wait_audio", conference_sid=room.sid, url=self._resolve(base, media), loop=loop)
                    case twiml.Pause(length=length):
                        await wait_any([participant.wait_over], timeout=length)
                    case twiml.Redirect(url=target, method=method) if redirects < MAX_WAIT_REDIRECTS:
                        redirects += 1
                        request = Fetch(self._resolve(base, target), method, label="wait url")
                        break
                    case twiml.Redirect():
                        leg.record("wait_audio", conference_sid=room.sid, url=None, silence=True,
                                   note=f"stopped following the waitUrl after {MAX_WAIT_REDIRECTS} redirects")
                        return
                    case _:
                        leg.record("error", message=f"<{type(verb).__name__}> is not allowed in a waitUrl document")
                        return
