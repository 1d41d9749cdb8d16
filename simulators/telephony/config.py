"""What the simulator needs to know: the product's account, public URL and server numbers
from Django settings, its own knobs from its own environment variables (or given by tests).

- `SIMULATOR_ANSWER_DELAY_SECONDS` (default 1): how long a dialled device rings before it answers.
- `SIMULATOR_BACKEND_URL` (default none): where webhooks are sent, when not to the server
  the simulator is mounted in (see `outbound.Outbound`).
- `SIMULATOR_CARRIER_TIMER_SCALE` (default 1): the carrier's no-reply timer lasts the line's
  T (5..30 s) times this; 0.05 makes T=20 s last 1 s (tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


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
    # The account's API keys (SID → secret) that sign the Access Tokens simulated devices register
    # with (tokens.py): the product's TWILIO_API_KEY_SID / TWILIO_API_KEY_SECRET.
    api_keys: tuple[tuple[str, str], ...] = ()
    answer_delay_seconds: float = 1.0
    backend_url: str | None = None
    # The carrier's no-reply timer (carrier.py) lasts the line's T seconds times this.
    carrier_timer_scale: float = 1.0
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
        """The product's account and addresses from Django settings; the simulator's own
        variables from the environment (a bad value raises ImproperlyConfigured)."""
        values = dict(
            account_sid=settings.TWILIO_ACCOUNT_SID,
            auth_token=settings.TWILIO_AUTH_TOKEN,
            public_base_url=settings.PUBLIC_BASE_URL.rstrip("/"),
            server_numbers=tuple(settings.SERVER_NUMBERS),
            api_keys=_api_keys(),
            answer_delay_seconds=_seconds("SIMULATOR_ANSWER_DELAY_SECONDS", 1.0),
            backend_url=_url("SIMULATOR_BACKEND_URL"),
            carrier_timer_scale=_seconds("SIMULATOR_CARRIER_TIMER_SCALE", 1.0),
        )
        values.update(overrides)
        return cls(**values)


def _api_keys() -> tuple[tuple[str, str], ...]:
    sid, secret = getattr(settings, "TWILIO_API_KEY_SID", None), getattr(settings, "TWILIO_API_KEY_SECRET", None)
    return ((sid, secret),) if sid and secret else ()


def _variable(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _seconds(name: str, default: float) -> float:
    value = _variable(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if not seconds >= 0:
        raise ImproperlyConfigured(f"{name}={value!r} must be 0 or more")
    return seconds


def _url(name: str) -> str | None:
    value = _variable(name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImproperlyConfigured(f"{name}={value!r} is not an http:// or https:// URL")
    return value.rstrip("/")
