"""What the simulator needs to know, read once from Django settings or given by tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulated provider's account and the backend it serves.

    `public_base_url` is the URL the provider believes the backend lives at: every
    webhook URL is built on it and signed as such, exactly as Twilio signs the URL
    it requests. `backend_url`, when set, is where those requests are actually
    sent (a reverse proxy in miniature); see `outbound.Outbound`.
    """

    account_sid: str
    auth_token: str
    public_base_url: str
    server_numbers: tuple[str, ...]
    answer_delay_seconds: float = 1.0
    backend_url: str | None = None
    # The provider waits this long for a webhook's answer (Twilio: 15 s).
    webhook_timeout_seconds: float = 15.0
    # Status and conference callbacks that get no answer or a 502/503/504 are tried again
    # this many times, after the answer's Retry-After (at most `callback_retry_max_wait`)
    # or `callback_retry_seconds`: Twilio's connection overrides with `rp=5xx,ct` (its
    # default retries only a failed connection, once). TwiML fetches are not retried.
    callback_retries: int = 3
    callback_retry_seconds: float = 1.0
    callback_retry_max_wait: float = 5.0
    voice_path: str = "/telephony/twilio/voice"
    status_path: str = "/telephony/twilio/status"

    @property
    def voice_url(self) -> str:
        return self.public_base_url + self.voice_path

    @property
    def status_url(self) -> str:
        return self.public_base_url + self.status_path

    @classmethod
    def from_settings(cls, **overrides) -> SimulatorConfig:
        from django.conf import settings

        values = dict(
            account_sid=settings.TWILIO_ACCOUNT_SID,
            auth_token=settings.TWILIO_AUTH_TOKEN,
            public_base_url=settings.PUBLIC_BASE_URL.rstrip("/"),
            server_numbers=tuple(settings.SERVER_NUMBERS),
            answer_delay_seconds=settings.SIMULATOR_ANSWER_DELAY_SECONDS,
            backend_url=getattr(settings, "SIMULATOR_BACKEND_URL", None),
        )
        values.update(overrides)
        return cls(**values)
