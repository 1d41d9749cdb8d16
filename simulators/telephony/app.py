"""The simulator's ASGI application: every path under /simulator/.

`create_app(config)` builds one: embedded in the backend's server by the
development entry point (`simulators.asgi`: same process, same event loop), for
the standalone server (`manage.py simulator`) and for tests.

Its HTTP surface is `SURFACE` below, also served at GET /simulator/; the
requests and answers are described in docs/SIMULATOR.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlencode

from simulators.telephony import strict, tokens, twiml
from simulators.telephony.carrier import Carrier, check_e164
from simulators.telephony.config import SimulatorConfig
from simulators.telephony.legs import BEHAVIOURS, Behaviour
from simulators.telephony.media import MediaEngine
from simulators.telephony.outbound import Outbound
from simulators.telephony.provider import WITHHELD, Callback, Provider, SimulatorError

log = logging.getLogger("simulators.telephony")

PREFIX = "/simulator"
MAX_BODY = 1 << 20
REST_LOG_SIZE = 5000  # Twilio REST requests GET /simulator/rest-log keeps (the oldest go first)
CONFERENCE_SID = re.compile(r"CF[0-9a-fA-F]{32}")
PAGE_SIZE = 50  # Twilio's default PageSize
SURFACE = [
    ("GET /simulator/", "this index"),
    ("POST /simulator/2010-04-01/Accounts/{AccountSid}/Calls.json",
     "Twilio REST: place a call (form: To, From, Url or Twiml)"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Calls.json", "Twilio REST: list calls"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json", "Twilio REST: one call"),
    ("POST /simulator/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json",
     "Twilio REST: update a live call (form: Url and Method, Twiml, or Status=completed)"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Conferences.json",
     "Twilio REST: list conferences (query: FriendlyName, Status)"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}.json", "Twilio REST: one conference"),
    ("POST /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}.json",
     "Twilio REST: end a conference (form: Status=completed)"),
    ("POST /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSidOrFriendlyName}/Participants.json",
     "Twilio REST: call To and add it to the conference (created if the name is new)"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants.json",
     "Twilio REST: the conference's current participants"),
    ("GET /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants/{CallSidOrLabel}.json",
     "Twilio REST: one participant"),
    ("POST /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants/{CallSidOrLabel}.json",
     "Twilio REST: update a participant (form: Muted, Hold, HoldUrl, EndConferenceOnExit)"),
    ("DELETE /simulator/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants/{CallSidOrLabel}"
     ".json", "Twilio REST: remove a participant (204)"),
    ("GET /simulator/calls", "every call and leg, with its events"),
    ("POST /simulator/calls",
     "a call straight to a server number {from (E.164 or anonymous), to, forwarded_from?, retry_webhook?}"),
    ("GET /simulator/calls/{sid}", "one call or leg, with its events"),
    ("POST /simulator/calls/{sid}/hangup", "{party: caller|device} hangs up"),
    ("POST /simulator/calls/{sid}/digits", "{digits: \"12#\"}: the caller presses keys during a <Gather>"),
    ("GET /simulator/conferences", "every conference, with its participants (current and past) and events"),
    ("GET /simulator/conferences/{sid or friendly name}", "one conference"),
    ("GET /simulator/devices", "configured device behaviours"),
    ("POST /simulator/devices", "{address, behaviour: answer|no-answer|busy|fail, answer_after?, hangup_after?, "
                                "press?, press_after?, access_token?}"),
    ("POST /simulator/devices/hangup", "{address}: the device hangs up its live call (its voice SDK's disconnect)"),
    ("POST /simulator/devices/mute", "{address, muted}: the device mutes or unmutes its microphone (its voice "
                                     "SDK's mute; recorded on the leg only)"),
    ("POST /simulator/media", "{address, access_token, sdp}: a browser tab's WebRTC offer for the call dialled "
                              "next to its address; answers {peer, type: answer, sdp} (call audio)"),
    ("GET /simulator/media", "every media peer, and what every caller heard (no frames)"),
    ("GET /simulator/media/{sid}", "a call's audio: what the caller heard (frames, levels, max_gap_ms) and its peers"),
    ("DELETE /simulator/state", "forget every call, device and forwarding"),
    ("GET /simulator/rest-log", "the Twilio REST requests received, oldest first: {method, path, query, status}"),
    ("POST /simulator/carrier/mmi", "{line, code}: call forwarding codes 21, 67, 61, 62, 004, 002: **SC*<number>#, "
                                    "**61*<number>**<T>#, *SC#, #SC#, *#SC#, ##SC#"),
    ("GET /simulator/carrier/lines/{line}", "the line's forwarding (busy at the top, every kind under forwarding), "
                                            "handset power, simultaneous ring"),
    ("PATCH /simulator/carrier/lines/{line}", "{handset?: on|off, simultaneous_ring?: E.164 or null}"),
    ("POST /simulator/carrier/lines/{line}/handset", "{state: on|off}: the handset is switched on or off"),
    ("GET /simulator/carrier/calls", "every call to a handset"),
    ("POST /simulator/carrier/calls", "{line, caller, caller_name?}: forwarded at once, not reachable, or the "
                                      "handset rings (and simultaneous ring, the no-reply timer start)"),
    ("GET /simulator/carrier/calls/{id}", "one call to a handset"),
    ("POST /simulator/carrier/calls/{id}/reject", "the handset rejects: forwarded on busy, or busy"),
    ("POST /simulator/carrier/calls/{id}/answer", "answered on the handset"),
    ("POST /simulator/carrier/calls/{id}/hangup", "the caller hangs up"),
]


class Request:
    def __init__(self, scope: dict, body: bytes, match: re.Match):
        self.scope = scope
        self.method = scope["method"]
        self.body = body
        self.args = {key: unquote(value) for key, value in match.groupdict().items()}
        self.headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        self.query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))

    def json(self) -> dict:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise SimulatorError(400, "malformed_json", "The body is not JSON.") from None
        if not isinstance(data, dict):
            raise SimulatorError(400, "malformed_json", "The body must be a JSON object.")
        return data

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def form_all(self, name: str) -> list[str]:
        """Every value of a form field given several times (the twilio SDK sends a list that way)."""
        return [value for key, value in parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)
                if key == name]


class Response:
    def __init__(self, status: int, body: dict | list | None, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _twilio_error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    """Twilio's error body: {code, message, more_info, status}."""
    number = int(code) if code.isdigit() else 20001
    return Response(status, {"code": number, "message": message,
                             "more_info": f"https://www.twilio.com/docs/errors/{number}", "status": status}, headers)


Handler = Callable[[Request], Awaitable[Response]]


class SimulatorApp:
    """ASGI application of the carrier + provider simulator."""

    def __init__(self, config: SimulatorConfig, *, embedded: bool):
        self.config = config
        self.embedded = embedded
        self.outbound = Outbound(config)
        self.provider = Provider(config, self.outbound)
        self.carrier = Carrier(self.provider)
        self.media = MediaEngine(self.provider)
        # Every Twilio REST request and its answer's status, for tests that check what the product asked.
        self.rest_log: deque[dict] = deque(maxlen=REST_LOG_SIZE)
        self.spec = strict.load()
        # (operation, parameter) of the last requests' parameters Twilio would ignore (its warning 20001).
        self.ignored_parameters: deque[tuple[str, str]] = deque(maxlen=100)
        account = r"(?P<account>[^/]+)"
        conference = r"(?P<conference>[^/]+?)"
        self.routes: list[tuple[re.Pattern, dict[str, Handler]]] = [(re.compile(pattern + r"$"), handlers) for
                                                                    pattern, handlers in [
            (r"/?", {"GET": self.index}),
            (rf"/2010-04-01/Accounts/{account}/Calls\.json", {"GET": self.rest_list, "POST": self.rest_create}),
            (rf"/2010-04-01/Accounts/{account}/Calls/(?P<sid>[^/]+)\.json",
             {"GET": self.rest_fetch, "POST": self.rest_update}),
            (rf"/2010-04-01/Accounts/{account}/Conferences\.json", {"GET": self.rest_conferences}),
            (rf"/2010-04-01/Accounts/{account}/Conferences/{conference}\.json",
             {"GET": self.rest_conference, "POST": self.rest_conference_update}),
            (rf"/2010-04-01/Accounts/{account}/Conferences/{conference}/Participants\.json",
             {"GET": self.rest_participants, "POST": self.rest_participant_create}),
            (rf"/2010-04-01/Accounts/{account}/Conferences/{conference}/Participants/(?P<participant>[^/]+)\.json",
             {"GET": self.rest_participant, "POST": self.rest_participant_update,
              "DELETE": self.rest_participant_delete}),
            (r"/calls", {"GET": self.calls_list, "POST": self.calls_create}),
            (r"/calls/(?P<sid>[^/]+)", {"GET": self.calls_detail}),
            (r"/calls/(?P<sid>[^/]+)/hangup", {"POST": self.calls_hangup}),
            (r"/calls/(?P<sid>[^/]+)/digits", {"POST": self.calls_digits}),
            (r"/conferences", {"GET": self.conferences_list}),
            (r"/conferences/(?P<conference>[^/]+)", {"GET": self.conferences_detail}),
            (r"/devices", {"GET": self.devices_list, "POST": self.devices_set}),
            (r"/devices/hangup", {"POST": self.devices_hangup}),
            (r"/devices/mute", {"POST": self.devices_mute}),
            (r"/media", {"GET": self.media_list, "POST": self.media_offer}),
            (r"/media/(?P<sid>[^/]+)", {"GET": self.media_detail}),
            (r"/state", {"DELETE": self.state_reset}),
            (r"/rest-log", {"GET": self.rest_log_list}),
            (r"/carrier/mmi", {"POST": self.carrier_mmi}),
            (r"/carrier/lines/(?P<line>[^/]+)", {"GET": self.carrier_line, "PATCH": self.carrier_line_update}),
            (r"/carrier/lines/(?P<line>[^/]+)/handset", {"POST": self.carrier_handset}),
            (r"/carrier/calls", {"GET": self.carrier_calls, "POST": self.carrier_call_create}),
            (r"/carrier/calls/(?P<id>[^/]+)", {"GET": self.carrier_call_detail}),
            (r"/carrier/calls/(?P<id>[^/]+)/(?P<action>reject|answer|hangup)", {"POST": self.carrier_call_act}),
        ]]

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        if self.embedded:
            self.outbound.learn_origin(scope)
        body, too_big = bytearray(), False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            too_big = too_big or len(body) > MAX_BODY
            if too_big:
                body.clear()
            if not message.get("more_body"):
                break
        if too_big:
            response = Response(413, _envelope("too_large", "The body is too large."))
        else:
            response = await self._dispatch(scope, bytes(body))
        if scope["path"].startswith(PREFIX + "/2010-04-01/"):
            self.rest_log.append({"method": scope["method"], "path": scope["path"][len(PREFIX):],
                                  "query": scope.get("query_string", b"").decode("latin-1"),
                                  "status": response.status})
        if response.body is None:  # 204
            payload, headers = b"", [(b"content-length", b"0")]
        else:
            payload = json.dumps(response.body, indent=1 if scope["method"] == "GET" else None).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(key.lower().encode(), value.encode()) for key, value in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Stop every simulated call (no callbacks) and close the HTTP clients."""
        await self.carrier.reset()
        await self.media.reset()
        await self.provider.reset()
        await self.outbound.aclose()

    async def _dispatch(self, scope, body: bytes) -> Response:
        path = scope["path"]
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            return Response(404, _envelope("not_found", "The simulator lives under /simulator/."))
        relative = path[len(PREFIX):]
        for pattern, handlers in self.routes:
            match = pattern.match(relative)
            if not match:
                continue
            handler = handlers.get(scope["method"])
            if handler is None and not relative.startswith(strict.API_PREFIX):
                return Response(405, _envelope("method_not_allowed", f"{scope['method']} is not allowed here."),
                                {"Allow": ", ".join(handlers)})
            request = Request(scope, body, match)
            try:
                if relative.startswith(strict.API_PREFIX):
                    self._authenticate(request)
                    self._conform(scope, relative, body)
                if handler is None:  # described by Twilio, played by the simulator: neither
                    raise SimulatorError(405, "20004", f"Method not allowed: {scope['method']}.",
                                         {"Allow": ", ".join(handlers)})
                return await handler(request)
            except SimulatorError as exc:
                if "account" in request.args:
                    return _twilio_error(exc.status, exc.code, exc.message, exc.headers)
                return Response(exc.status, _envelope(exc.code, exc.message), exc.headers)
        if relative.startswith(strict.API_PREFIX):
            error = strict.not_found(relative)
            return _twilio_error(error.status, error.code, error.message, error.headers)
        return Response(404, _envelope("not_found", f"No simulator endpoint {path}."))

    def _conform(self, scope, relative: str, body: bytes) -> None:
        """Refuse what Twilio's API description refuses (see strict.py); note what Twilio ignores."""
        operation, _ = self.spec.operation(scope["method"], relative)
        ignored = self.spec.check(operation, query=scope.get("query_string", b"").decode("latin-1"), body=body)
        for name in ignored:
            log.warning("simulator: %s ignores the parameter %r (Twilio's warning 20001: not in its API "
                        "description)", operation.id, name)
            self.ignored_parameters.append((operation.id, name))

    # -- index -----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return Response(200, {
            "service": "callpull carrier + voice provider simulator",
            "docs": "docs/SIMULATOR.md",
            "account_sid": self.config.account_sid,
            "server_numbers": list(self.config.server_numbers),
            "webhooks": {"voice": self.config.voice_url, "status": self.config.status_url},
            "answer_delay_seconds": self.config.answer_delay_seconds,
            "carrier_timer_scale": self.config.carrier_timer_scale,
            "api_description": {key: self.spec.source[key] for key in ("repository", "commit", "path")},
            "ignored_parameters": [{"operation": operation, "parameter": name}
                                   for operation, name in self.ignored_parameters],
            "routes": [{"route": route, "does": does} for route, does in SURFACE],
        })

    # -- Twilio REST -------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username = password = ""
        valid = (scheme.lower() == "basic"
                 and hmac.compare_digest(username.encode(), self.config.account_sid.encode())
                 and hmac.compare_digest(password.encode(), self.config.auth_token.encode()))
        if not valid:
            raise SimulatorError(401, "20003", "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if request.args["account"] != self.config.account_sid:
            raise SimulatorError(404, "20404", f"The requested resource {request.scope['path']} was not found")

    def _rest_leg(self, request: Request):
        self._authenticate(request)
        leg = self.provider.calls.get(request.args["sid"])
        if leg is None:
            raise SimulatorError(404, "20404", f"The requested resource {request.scope['path']} was not found")
        return leg

    async def rest_fetch(self, request: Request) -> Response:
        return Response(200, self._rest_leg(request).as_resource())

    async def rest_update(self, request: Request) -> Response:
        leg = self._rest_leg(request)
        form = request.form()
        if form.get("Twiml") and form.get("Url"):  # UpdateCall: "Twiml and url parameters are mutually exclusive"
            raise SimulatorError(400, "21200", "Twiml and Url are mutually exclusive.")
        document = None
        if form.get("Twiml"):
            try:
                document = twiml.parse(form["Twiml"])
            except twiml.TwiMLError as exc:
                raise SimulatorError(400, "21200", f"Invalid Twiml: {exc}") from None
        method = (form.get("Method") or "POST").upper()
        if method not in ("GET", "POST"):
            raise SimulatorError(400, "21209", f"Method {method!r} is not GET or POST.")
        leg = self.provider.update(leg, url=form.get("Url") or None, method=method, document=document,
                                   status=form.get("Status") or None)
        return Response(200, leg.as_resource())

    async def rest_list(self, request: Request) -> Response:
        self._authenticate(request)
        wanted = {field: request.query[name] for name, field in (
            ("To", "to"), ("From", "from"), ("ParentCallSid", "parent_call_sid"), ("Status", "status"))
            if name in request.query}
        calls = [resource for resource in (leg.as_resource() for leg in reversed(self.provider.calls.values()))
                 if all(resource[field] == value for field, value in wanted.items())]
        return Response(200, _page(request, "calls", calls))

    async def rest_create(self, request: Request) -> Response:
        self._authenticate(request)
        form = request.form()
        for name in ("To", "From"):
            if not form.get(name):
                raise SimulatorError(400, "21201" if name == "To" else "21213", f"A '{name}' is required.")
        if not form.get("Url") and not form.get("Twiml"):
            raise SimulatorError(400, "21205", "Url or Twiml is required.")
        document = None
        if form.get("Twiml") and not form.get("Url"):  # CreateCall's Twiml: "If both twiml and url are
            try:                                       # provided then twiml parameter will be ignored"
                document = twiml.parse(form["Twiml"])
            except twiml.TwiMLError as exc:
                raise SimulatorError(400, "21200", f"Invalid Twiml: {exc}") from None
        callback = _callback(request, form, "StatusCallback", twiml.DIAL_EVENTS, ("completed",))
        timeout = _seconds(form, "Timeout", 60)
        leg = self.provider.outbound_call(from_=form["From"], to=form["To"], url=form.get("Url"),
                                          method=(form.get("Method") or "POST").upper(), document=document,
                                          callback=callback, timeout=timeout)
        return Response(201, leg.as_resource())

    # -- Twilio REST: conferences ------------------------------------------------------------

    def _rest_conference(self, request: Request):
        self._authenticate(request)
        try:
            return self.provider.conference(request.args["conference"])
        except SimulatorError:
            raise SimulatorError(404, "20404", f"The requested resource {request.scope['path']} was not found") \
                from None

    def _rest_participant(self, request: Request):
        self._authenticate(request)
        if not CONFERENCE_SID.fullmatch(request.args["conference"]):
            # Twilio fetches, updates and deletes a participant only under its conference's SID
            # (ConferenceSid `^CF[0-9a-fA-F]{32}$`); under a friendly name it answers 404.
            raise SimulatorError(404, "20404", f"The requested resource {request.scope['path']} was not found")
        room = self._rest_conference(request)
        participant = room.find(request.args["participant"])
        if participant is None:
            raise SimulatorError(404, "20404", f"The requested resource {request.scope['path']} was not found")
        return participant

    def _page(self, request: Request, key: str, items: list[dict]) -> Response:
        """One page of a Twilio list: `PageSize` (default 50) items from `Page` (from 0), with the
        page's URIs as Twilio writes them (the filters, then PageSize and Page)."""
        return Response(200, _page(request, key, items))

    async def rest_conferences(self, request: Request) -> Response:
        self._authenticate(request)
        rooms = [room for room in reversed(self.provider.conferences.values())
                 if request.query.get("FriendlyName") in (None, room.friendly_name)
                 and request.query.get("Status") in (None, room.status)]
        return self._page(request, "conferences", [room.as_resource() for room in rooms])

    async def rest_conference(self, request: Request) -> Response:
        return Response(200, self._rest_conference(request).as_resource())

    async def rest_conference_update(self, request: Request) -> Response:
        room = self._rest_conference(request)
        status = request.form().get("Status")
        if status not in (None, "", "completed"):
            raise SimulatorError(400, "16002", f"Invalid Status {status!r}: only completed.")
        if status == "completed":
            self.provider.end_conference(room)
        return Response(200, room.as_resource())

    async def rest_participants(self, request: Request) -> Response:
        room = self._rest_conference(request)
        wanted = {name.lower(): request.query[name].lower() == "true" for name in ("Muted", "Hold", "Coaching")
                  if name in request.query}
        participants = [resource for resource in (participant.as_resource() for participant in room.current())
                        if all(resource[field] == value for field, value in wanted.items())]
        return self._page(request, "participants", participants)

    async def rest_participant(self, request: Request) -> Response:
        return Response(200, self._rest_participant(request).as_resource())

    async def rest_participant_create(self, request: Request) -> Response:
        self._authenticate(request)
        form = request.form()
        for name in ("To", "From"):
            if not form.get(name):
                raise SimulatorError(400, "21201" if name == "To" else "21213", f"A '{name}' is required.")
        beep = form.get("Beep") or "true"
        if beep not in twiml.BEEPS:
            raise SimulatorError(400, "16002", f"Beep must be one of {', '.join(twiml.BEEPS)}.")
        wait_method = (form.get("WaitMethod") or "POST").upper()
        participant = self.provider.add_participant(
            request.args["conference"], from_=form["From"], to=form["To"], label=form.get("Label") or None,
            muted=_flag(form, "Muted", False), beep=beep,
            start_conference_on_enter=_flag(form, "StartConferenceOnEnter", True),
            end_conference_on_exit=_flag(form, "EndConferenceOnExit", False),
            timeout=_seconds(form, "Timeout", 60),
            callback=_callback(request, form, "StatusCallback", twiml.DIAL_EVENTS, ("completed",)),
            conference_callback=_callback(request, form, "ConferenceStatusCallback", twiml.CONFERENCE_EVENTS,
                                          ("start", "end")),
            wait_url=form.get("WaitUrl"), wait_method=wait_method if wait_method in ("GET", "POST") else "POST")
        return Response(201, participant.as_resource())

    async def rest_participant_update(self, request: Request) -> Response:
        participant = self._rest_participant(request)
        form = request.form()
        participant = self.provider.update_participant(
            participant, muted=_flag(form, "Muted", None), hold=_flag(form, "Hold", None),
            hold_url=form.get("HoldUrl") or None, end_conference_on_exit=_flag(form, "EndConferenceOnExit", None))
        return Response(200, participant.as_resource())

    async def rest_participant_delete(self, request: Request) -> Response:
        self.provider.remove_participant(self._rest_participant(request))
        return Response(204, None)

    # -- control API: provider -----------------------------------------------------------

    async def calls_list(self, request: Request) -> Response:
        return Response(200, [leg.as_json() for leg in self.provider.calls.values()])

    async def calls_detail(self, request: Request) -> Response:
        return Response(200, self.provider.get(request.args["sid"]).as_json())

    async def calls_create(self, request: Request) -> Response:
        data = request.json()
        caller = data.get("from")
        if isinstance(caller, str) and caller.lower() == WITHHELD:
            caller = WITHHELD
        elif caller is not None:
            check_e164(caller, "from")
        forwarded_from = data.get("forwarded_from")
        if forwarded_from is not None:
            check_e164(forwarded_from, "forwarded_from")
        leg = self.provider.inbound_call(from_=caller, to=check_e164(data.get("to"), "to"),
                                         forwarded_from=forwarded_from, caller_name=data.get("caller_name"),
                                         retry_webhook=bool(data.get("retry_webhook")))
        return Response(201, leg.as_json())

    async def calls_hangup(self, request: Request) -> Response:
        leg = self.provider.get(request.args["sid"])
        party = request.json().get("party", "caller")
        target = self.provider.hangup(leg, party)
        return Response(202, target.as_json())

    async def calls_digits(self, request: Request) -> Response:
        leg = self.provider.get(request.args["sid"])
        self.provider.send_digits(leg, request.json().get("digits"))
        return Response(202, leg.as_json())

    async def conferences_list(self, request: Request) -> Response:
        return Response(200, [room.as_json() for room in self.provider.conferences.values()])

    async def conferences_detail(self, request: Request) -> Response:
        return Response(200, self.provider.conference(request.args["conference"]).as_json())

    async def devices_list(self, request: Request) -> Response:
        return Response(200, [{"address": address, **behaviour.as_json()}
                              for address, behaviour in self.provider.devices.items()])

    async def devices_set(self, request: Request) -> Response:
        data = request.json()
        address = data.get("address")
        if not isinstance(address, str) or not address.strip():
            raise SimulatorError(400, "invalid_input", "address is required: client:<identity>, sip:… or +1….")
        action = data.get("behaviour", "answer")
        if action not in BEHAVIOURS:
            raise SimulatorError(400, "invalid_input", f"behaviour must be one of {', '.join(BEHAVIOURS)}.")
        numbers = {}
        for name in ("answer_after", "hangup_after", "press_after"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise SimulatorError(400, "invalid_input", f"{name} must be a number of seconds.")
            numbers[name] = value
        press = data.get("press")
        if press is not None and (not isinstance(press, str) or not press
                                  or any(key not in twiml.DTMF_KEYS for key in press)):
            raise SimulatorError(400, "invalid_input", "press must be keys of 0-9, * and #, e.g. \"1\".")
        if press is not None and action != "answer":
            raise SimulatorError(400, "invalid_input", "press needs behaviour answer: only a call answered hears "
                                                       "a <Gather>.")
        registration = self._registration(address.strip(), data.get("access_token"))
        behaviour = Behaviour(action, press=press, **numbers,
                              token_identity=registration.identity if registration else None,
                              token_expires_at=registration.expires_at if registration else None)
        self.provider.set_device(address.strip(), behaviour)
        return Response(200, {"address": address.strip(), **behaviour.as_json()})

    def _registration(self, address: str, token) -> tokens.Registration | None:
        """A device's voice SDK registering with an Access Token: checked as Twilio checks it
        (tokens.py), refused with 401 and Twilio's error code. No token: None (not checked)."""
        if token is None:
            return None
        if not address.startswith("client:"):
            raise SimulatorError(400, "invalid_input", "access_token is for client:<identity> addresses only.")
        try:
            return tokens.verify(token, account_sid=self.config.account_sid, api_keys=dict(self.config.api_keys),
                                 identity=address.removeprefix("client:"))
        except tokens.TokenRefused as exc:
            raise SimulatorError(401, str(exc.code), str(exc)) from None

    async def devices_hangup(self, request: Request) -> Response:
        legs = self.provider.device_hangup(_address(request.json()))
        return Response(202, [leg.as_json() for leg in legs])

    async def devices_mute(self, request: Request) -> Response:
        data = request.json()
        muted = data.get("muted", True)
        if not isinstance(muted, bool):
            raise SimulatorError(400, "invalid_input", "muted must be true or false.")
        legs = self.provider.device_mute(_address(data), muted)
        return Response(200, [leg.as_json() for leg in legs])

    async def media_offer(self, request: Request) -> Response:
        """A browser tab's WebRTC offer, with its device's Access Token (media.py)."""
        data = request.json()
        address = _address(data)
        if not address.startswith("client:"):
            address = f"client:{address}"
        if data.get("access_token") is None:
            raise SimulatorError(401, str(tokens.INVALID), "access_token is required: the device's voice token.")
        self._registration(address, data.get("access_token"))
        peer, sdp = await self.media.offer(address, data.get("sdp"))
        return Response(201, {"peer": peer.id, "type": "answer", "sdp": sdp})

    async def media_list(self, request: Request) -> Response:
        return Response(200, self.media.summary())

    async def media_detail(self, request: Request) -> Response:
        return Response(200, self.media.stats(request.args["sid"]))

    async def state_reset(self, request: Request) -> Response:
        await self.carrier.reset()  # first: no carrier timer places a call after the provider's reset
        await self.media.reset()
        await self.provider.reset()
        self.rest_log.clear()
        return Response(200, {"reset": True})

    async def rest_log_list(self, request: Request) -> Response:
        return Response(200, list(self.rest_log))

    # -- control API: carrier --------------------------------------------------------------

    async def carrier_mmi(self, request: Request) -> Response:
        data = request.json()
        return Response(200, self.carrier.dial_mmi(data.get("line"), data.get("code")))

    async def carrier_line(self, request: Request) -> Response:
        return Response(200, self.carrier.line_json(check_e164(request.args["line"], "line")))

    async def carrier_line_update(self, request: Request) -> Response:
        data = request.json()
        unknown = set(data) - {"handset", "simultaneous_ring"}
        if unknown:
            raise SimulatorError(400, "invalid_input", f"Unknown fields {', '.join(sorted(unknown))}: handset, "
                                                       "simultaneous_ring.")
        return Response(200, self.carrier.set_line(request.args["line"], handset=data.get("handset"),
                                                   simultaneous_ring=data.get("simultaneous_ring", ...)))

    async def carrier_handset(self, request: Request) -> Response:
        state = request.json().get("state")
        if state not in ("on", "off"):
            raise SimulatorError(400, "invalid_input", "state must be on or off.")
        return Response(200, self.carrier.set_line(request.args["line"], handset=state))

    async def carrier_calls(self, request: Request) -> Response:
        return Response(200, [self.carrier.as_json(call) for call in self.carrier.calls.values()])

    async def carrier_call_create(self, request: Request) -> Response:
        data = request.json()
        call = self.carrier.place_call(line=data.get("line"), caller=data.get("caller"),
                                       caller_name=data.get("caller_name"))
        return Response(201, self.carrier.as_json(call))

    async def carrier_call_detail(self, request: Request) -> Response:
        return Response(200, self.carrier.as_json(self.carrier.get(request.args["id"])))

    async def carrier_call_act(self, request: Request) -> Response:
        call = self.carrier.get(request.args["id"])
        action = request.args["action"]
        if action == "reject":
            self.carrier.reject(call, retry_webhook=bool(request.json().get("retry_webhook")))
        elif action == "answer":
            self.carrier.answer(call)
        else:
            self.carrier.hangup(call)
        return Response(200, self.carrier.as_json(call))


def _address(data: dict) -> str:
    address = data.get("address")
    if not isinstance(address, str) or not address.strip():
        raise SimulatorError(400, "invalid_input", "address is required: client:<identity>, sip:… or +1….")
    return address.strip()


def _page(request: Request, key: str, items: list[dict]) -> dict:
    size = int(request.query.get("PageSize") or PAGE_SIZE)  # strict.py checked both against the description
    number = int(request.query.get("Page") or 0)
    start = number * size
    chosen = items[start:start + size]
    path = request.scope["path"][len(PREFIX):]
    filters = [(name, value) for name, value in parse_qsl(request.scope.get("query_string", b"").decode("latin-1"),
                                                           keep_blank_values=True)
               if name not in ("Page", "PageSize", "PageToken")]

    def uri(page: int) -> str:
        return f"{path}?{urlencode([*filters, ('PageSize', size), ('Page', page)])}"

    return {key: chosen, "page": number, "page_size": size, "start": start, "end": start + max(len(chosen) - 1, 0),
            "first_page_uri": uri(0), "next_page_uri": uri(number + 1) if start + size < len(items) else None,
            "previous_page_uri": uri(number - 1) if number > 0 else None, "uri": uri(number)}


def _flag(form: dict[str, str], name: str, default):
    """A Twilio boolean form field: true or false (any case); absent or empty: `default`."""
    value = form.get(name)
    if value is None or value == "":
        return default
    if value.lower() not in ("true", "false"):
        raise SimulatorError(400, "16002", f"{name} must be true or false.")
    return value.lower() == "true"


def _seconds(form: dict[str, str], name: str, default: float) -> float:
    try:
        value = float(form.get(name) or default)
    except ValueError:
        raise SimulatorError(400, "21208", f"{name} is not a number.") from None
    if value < 0:
        raise SimulatorError(400, "21208", f"{name} is negative.")
    return value


def _callback(request: Request, form: dict[str, str], name: str, allowed: tuple[str, ...],
              default: tuple[str, ...]) -> Callback | None:
    """{name}, {name}Event (space-separated or repeated), {name}Method → a Callback, or None."""
    url = form.get(name)
    if not url:
        return None
    events = tuple(event for value in request.form_all(f"{name}Event")
                   for event in re.split(r"[\s,]+", value.strip()) if event) or default
    unknown = set(events) - set(allowed)
    if unknown:
        raise SimulatorError(400, "21626",
                             f"{name}Event {' '.join(sorted(unknown))} is not one of {' '.join(allowed)}.")
    method = (form.get(f"{name}Method") or "POST").upper()
    if method not in ("GET", "POST"):
        raise SimulatorError(400, "21209", f"{name}Method {method!r} is not GET or POST.")
    return Callback(url, method, events)


def _envelope(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "fields": {}}}


def create_app(config: SimulatorConfig, *, embedded: bool = False) -> SimulatorApp:
    return SimulatorApp(config, embedded=embedded)
