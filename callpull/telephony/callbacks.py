"""Where the voice provider calls us back: the webhook URLs our TwiML and REST
requests name (served by callpull.telephony.views), and the ringback a waiting
caller hears."""

from urllib.parse import urlencode

from django.conf import settings


def webhook_url(name: str, **query) -> str:
    url = f"{settings.PUBLIC_BASE_URL}/telephony/twilio/{name}"
    return f"{url}?{urlencode(query)}" if query else url


def ringback_url() -> str:
    static = settings.STATIC_URL if "://" in settings.STATIC_URL else \
        f"{settings.PUBLIC_BASE_URL}/{settings.STATIC_URL.strip('/')}/"
    return f"{static}callpull/ringback.wav"
