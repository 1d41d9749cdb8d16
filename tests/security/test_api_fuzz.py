"""Schemathesis over the served OpenAPI schema, in-process (WSGI): no 5xx, every 4xx in
the error envelope, responses as the schema says. Bounded and derandomized so it stays
fast and repeatable.

Each operation runs against a real scenario (`Scenario`): a user with a handset, a
tablet and a desktop, a line, a ringing call, a live call and a pending pull. Its ids
are put into the path parameters of the cases (`Scenario.use_real_values`: the real ids
in turn, and every fourth case the generated value, a random id), as are the transfer's
allow-listed number and PIN into bodies that have those fields; and each operation is
called by the device that can act on it (the holder approves, a secondary answers),
so the call and pull endpoints are exercised past their lookup, not only with random
ids (404s).
`test_fuzzing_reached_the_calls_and_pulls` proves it from the answers counted per
operation.
"""

import uuid
from collections import Counter, defaultdict

import pytest
import schemathesis
from django.contrib.auth.hashers import make_password
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient

from callpull import services as line_services
from callpull.models import AccountSettings, Call
from tests.callpull.conftest import forward, join_leg, report
from tests.conftest import client_for, make_device, make_user

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())

PIN = "2468"
# Per operation ("POST /api/v1/calls/{call_id}/pull"): how many answers of each status.
answers: dict[str, Counter] = defaultdict(Counter)


class Scenario:
    """A user with a handset, a tablet and a desktop, a line, a live call (held by the
    tablet, approval needed to pull it), a pending pull of it by the desktop, and a
    second call ringing."""

    def __init__(self, fake_provider):
        user = make_user(f"fuzz{uuid.uuid4().hex[:8]}")
        self.handset, handset_token = make_device(user, kind="handset", name="Pixel")
        self.tablet, tablet_token = make_device(user, kind="tablet", name="Tablet", connect_type="client",
                                                connect_address="tablet-1")
        self.desktop, desktop_token = make_device(user, kind="desktop", name="Desktop", connect_type="sip",
                                                  connect_address="sip:desk@pbx.example")
        self.tokens = {"handset": handset_token, "tablet": tablet_token, "desktop": desktop_token}
        line, _ = line_services.line_register(device=self.handset, number="+15551234567", region=None,
                                              now=timezone.now())
        self.line = line_services.line_forwarding_confirm(line=line, state="active",
                                                          target=line.server_number.number, now=timezone.now())
        handset, tablet, desktop = (client_for(self.tokens[kind]) for kind in ("handset", "tablet", "desktop"))
        live = self._ok(report(handset, self.line), 201)["call"]["id"]
        self._ok(tablet.post(f"/api/v1/calls/{live}/answer"), 200)
        forward(APIClient(), sid="CA" + uuid.uuid4().hex)
        join_leg(APIClient(), live, fake_provider)
        assert Call.objects.get(pk=live).state == "connected"
        AccountSettings.objects.update_or_create(user=user, defaults={
            "pull_requires_approval": True, "transfer_allowlist": ["+15550007777"],
            "transfer_pin_hash": make_password(PIN)})
        pull = self._ok(desktop.post(f"/api/v1/calls/{live}/pull"), 202)["pull"]["id"]
        ringing = self._ok(report(handset, self.line, caller="+15550008888"), 201)["call"]["id"]
        assert Call.objects.get(pk=ringing).state == "ringing"
        # Real ids per path parameter; the handset (the default caller) is never revoked by DELETE.
        self.ids = {"call_id": [ringing, live], "pull_id": [pull], "line_id": [str(self.line.pk)],
                    "device_id": [str(self.tablet.pk), str(self.desktop.pk)]}
        # Values of the scenario for body fields no generator would hit: the allow-listed number, the PIN.
        self.fields = {"number": "+15550007777", "pin": PIN}
        self.turns = Counter()

    def _turn(self, name: str, real: list, generated):
        """The real values in turn, case after case; every fourth case the generated one."""
        turn = self.turns[name]
        self.turns[name] += 1
        return generated if turn % 4 == 3 else real[turn % len(real)]

    def use_real_values(self, case) -> None:
        for name, generated in list((case.path_parameters or {}).items()):
            if name in self.ids:
                case.path_parameters[name] = self._turn(name, self.ids[name], generated)
        if isinstance(case.body, dict):
            for name in self.fields.keys() & case.body.keys():
                case.body[name] = self._turn(name, [self.fields[name]], case.body[name])

    @staticmethod
    def _ok(response, status: int) -> dict:
        assert response.status_code == status, response.content
        return response.json()

    def token_for(self, path: str) -> str:
        """The device that can act on the operation: the tablet holds the live call (it
        approves or denies the pull, transfers) and, as a secondary, answers or declines
        the ringing one; the desktop pulls; the handset does the rest."""
        if path.endswith(("/answer", "/decline", "/transfer", "/approve", "/deny")):
            return self.tokens["tablet"]
        if path.endswith("/pull"):
            return self.tokens["desktop"]
        return self.tokens["handset"]


@pytest.fixture
def scenario(db, fake_provider):
    built = Scenario(fake_provider)
    # Like Django's test Client (which the scenario used, and which connects these again after
    # each of its requests): schemathesis's requests must not close the test's DB connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield built
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def error_envelope(ctx, response, case):
    """Every 4xx carries {"error": {"code", "message", "fields"}}."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "fields"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], body


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_fuzz(case, scenario):
    # At call time, for every phase: the coverage phase's cases are made when this module is
    # imported, before any scenario exists, so generation hooks could not give them real ids.
    scenario.use_real_values(case)
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {scenario.token_for(case.operation.path)}"},
        additional_checks=[error_envelope],
        # Valid by the schema is not always valid: a password's strength and a phone
        # number's plausibility are checked by the server, not expressible in OpenAPI.
        # And DRF's documented leniency is kept for clients: 0/1 for booleans, an empty
        # query parameter (`?state=`) read as absent.
        excluded_checks=[schemathesis.checks.positive_data_acceptance,
                         schemathesis.checks.negative_data_rejection])
    if case.method.upper() == case.operation.method.upper() and response.status_code != 401:
        # Aimed at the operation (not another method, nor without credentials): what it answered.
        answers[f"{case.operation.method.upper()} {case.operation.path}"][response.status_code] += 1


def test_fuzzing_reached_the_calls_and_pulls():
    """Runs after the fuzzing above (same module, in order). Every call and pull operation
    with an id in its path answered something other than 404 for most of its cases, and
    some of its answers (a 2xx, or a 409 for a call or pull in the wrong state) could only
    come from a real call or pull: the fuzzer exercised them past the lookup."""
    if not answers:
        pytest.skip("the fuzzing above did not run (deselected)")
    operations = {f"{operation.method.upper()} {operation.path}" for operation in
                  (result.ok() for result in schema.get_all_operations())
                  if operation.path.startswith(("/api/v1/calls/{", "/api/v1/pulls/{"))}
    assert operations and operations <= set(answers), f"not fuzzed: {operations - set(answers)}"
    shallow = {}
    for name in sorted(operations):
        counts = answers[name]
        found = sum(count for status, count in counts.items() if 200 <= status < 300 or status == 409)
        if counts[404] > sum(counts.values()) / 2 or not found:
            shallow[name] = dict(counts)
    assert not shallow, f"ids not reached (answers per status): {shallow}"
