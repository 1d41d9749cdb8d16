"""Every simulator answer is what Twilio's API description says it is, and the twilio SDK's own
resource classes read it: every operation the simulator plays is walked through
twilio.rest.Client (with a TwilioHttpClient pointed at the simulator, as
callpull/telephony/provider.py points it at TWILIO_API_BASE)."""

from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from twilio.rest import Client

from callpull.telephony.provider import ApiBaseHttpClient
from simulators.telephony import strict
from tests.simulator.support import ACCOUNT_SID, AUTH_TOKEN, CALLER, PUBLIC_URL, SERVER_NUMBER, until

VOICE = "/telephony/twilio/voice"
ROOM = "call-sdk"
CALLER_TWIML = (f'<Response><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true" '
                f'beep="false" participantLabel="caller">{ROOM}</Conference></Dial></Response>')
SPEC = strict.load()
DATES = "date-time-rfc-2822"


class Walk:
    """A twilio SDK client on the simulator that keeps every answer it got."""

    def __init__(self, sim):
        self.answers = []
        # as provider.py does with TWILIO_API_BASE
        http = ApiBaseHttpClient(sim.base_url + "/simulator", timeout=5, request_hooks={"response": [self._keep]})
        self.client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)

    def _keep(self, response, *args, **kwargs):
        self.answers.append(response)

    def last(self, operation_id):
        """The last answer, which must be `operation_id`'s and conform to the description."""
        response = self.answers[-1]
        op, _ = SPEC.operation(response.request.method, urlsplit(response.url).path.removeprefix("/simulator"))
        assert op.id == operation_id
        body = response.json() if response.content else None
        assert SPEC.conformance(op, response.status_code, body) == [], body
        return op, body


def read_as_the_sdk_does(instance, schema, resource):
    """Every property the description lists is on the SDK's instance, with the answer's value."""
    for name, prop in SPEC.schemas[schema]["properties"].items():
        attribute = "_from" if name == "from" else name
        assert hasattr(instance, attribute), (type(instance).__name__, name)
        value, raw = getattr(instance, attribute), resource[name]
        if raw is None:
            assert value is None, name
        elif prop.get("format") == DATES:
            assert isinstance(value, datetime) and value == parsedate_to_datetime(raw), (name, raw)
        else:
            assert value == raw, name


def test_the_twilio_sdk_reads_every_answer_of_every_operation(sim):
    walk = Walk(sim)
    client = walk.client
    walked = []

    def check(operation_id, instances=None):
        op, body = walk.last(operation_id)
        walked.append(operation_id)
        if instances is None:
            return body
        answer = op.answer
        if "page" in answer:
            resources = body[answer["page"]["key"]]
            schema = answer["page"]["items"]
        else:
            resources, schema = [body], answer["schema"]
        assert len(instances) == len(resources)
        for instance, resource in zip(instances, resources, strict=True):
            read_as_the_sdk_does(instance, schema, resource)
        return body

    sim.backend.answers[VOICE] = lambda params: CALLER_TWIML
    caller = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    until(sim, caller, activity="conference-waiting")

    added = client.conferences(ROOM).participants.create(
        from_=SERVER_NUMBER, to="client:tablet", label="device-1", timeout=10, muted=False, beep="false",
        start_conference_on_enter=True, end_conference_on_exit=False,
        status_callback=PUBLIC_URL + "/telephony/twilio/status", status_callback_method="POST",
        status_callback_event=["initiated", "ringing", "answered", "completed"])
    check("CreateParticipant", [added])
    until(sim, added.call_sid, activity="conference")

    [conference] = client.conferences.list(friendly_name=ROOM, status="in-progress", limit=1)
    check("ListConference", [conference])
    assert conference.sid == added.conference_sid and conference.status == "in-progress"
    check("FetchConference", [client.conferences(conference.sid).fetch()])
    participants = client.conferences(conference.sid).participants.list()
    check("ListParticipant", participants)
    assert [p.label for p in participants] == ["caller", "device-1"]
    check("FetchParticipant", [client.conferences(conference.sid).participants("device-1").fetch()])
    muted = client.conferences(conference.sid).participants(added.call_sid).update(muted=True)
    check("UpdateParticipant", [muted])
    assert muted.muted is True

    placed = client.calls.create(to="+15550001111", from_=SERVER_NUMBER,
                                 twiml='<Response><Pause length="30"/></Response>', timeout=10)
    check("CreateCall", [placed])
    until(sim, placed.sid, status="in-progress")
    fetched = client.calls(placed.sid).fetch()
    check("FetchCall", [fetched])
    assert (fetched.status, fetched._from, fetched.direction) == ("in-progress", SERVER_NUMBER, "outbound-api")

    pages_before = len(walk.answers)
    calls = client.calls.list(status="in-progress", page_size=1, limit=3)  # one page at a time: 3 pages
    assert len(walk.answers) - pages_before == 3
    for index, page in enumerate(walk.answers[pages_before:]):
        walk.answers.append(page)
        check("ListCall", calls[index:index + 1])
    assert {call.sid for call in calls} == {caller, added.call_sid, placed.sid}

    sim.backend.answers["/next"] = lambda params: '<Response><Pause length="30"/></Response>'
    check("UpdateCall", [client.calls(placed.sid).update(url=PUBLIC_URL + "/next", method="POST")])
    ended = client.calls(placed.sid).update(status="completed")
    check("UpdateCall", [ended])
    until(sim, placed.sid, status="completed")

    assert client.conferences(conference.sid).participants(added.call_sid).delete() is True
    check("DeleteParticipant")
    ended_conference = client.conferences(conference.sid).update(status="completed")
    check("UpdateConference", [ended_conference])
    assert ended_conference.status == "completed"
    assert ended_conference.reason_conference_ended == "conference-ended-via-api"
    until(sim, caller, status="completed")

    assert set(walked) == {op_id for op_id in SPEC.operations if op_id not in strict.NOT_PLAYED}
