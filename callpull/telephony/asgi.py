"""The provider's webhooks (/telephony/twilio/…) served in one trip to a thread
(callpull.http), on a small pool of their own.

A burst of forwarded calls (the provider posts their webhooks at once) queues on
this pool (`WEBHOOK_THREADS`: one for SQLite, whose single writer would only make
several threads wait on each other; more for PostgreSQL), not behind the API's
requests, whose ring reports may each hold a thread up to RING_ACK_WAIT_SECONDS
while they wait for a receipt. Webhook responses are small and never streamed.
"""

from django.conf import settings

from callpull.http import OneTripHandler

PREFIX = "/telephony/"


class WebhookHandler(OneTripHandler):
    """Django's request handling for the provider's webhooks, one thread trip per request."""

    def __init__(self):
        super().__init__(threads=settings.WEBHOOK_THREADS, name="webhook")
