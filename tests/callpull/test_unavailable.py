"""A database or Redis that is briefly out of reach is a 503 in the envelope, not a 500."""

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from redis.exceptions import MaxConnectionsError

from callpull import calls
from tests.callpull.conftest import report
from tests.conftest import error_code

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("failure", [OperationalError("server closed the connection unexpectedly"),
                                     MaxConnectionsError("Too many connections")])
def test_an_unreachable_database_or_redis_is_503_with_retry_after(handset_api, line, monkeypatch, failure):
    def unavailable(**kwargs):
        raise failure
    monkeypatch.setattr(calls, "call_report", unavailable)
    response = report(handset_api, line)
    assert response.status_code == 503
    assert error_code(response) == "service_unavailable"
    assert response["Retry-After"] == "1"


def test_serve_refuses_several_workers_sharing_the_embedded_simulator(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    with pytest.raises(CommandError, match="simulator"):
        call_command("serve", workers=2)
