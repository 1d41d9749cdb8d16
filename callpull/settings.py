"""Settings for callpull, read from the environment (see docs/CONFIGURATION in README).

The defaults run everything in one process with no services: a SQLite file, the
in-memory channel layer, FCM off and, with no Twilio credentials (DEBUG only), the
bundled carrier/provider simulator mounted by the development entry point
(`simulators.asgi`, see SIMULATOR_ENABLED below). The simulator's own variables
are read by `simulators.telephony.config`, not here.
Every variable is validated here so a typo stops the server at start-up.
"""

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from callpull.env import (
    env_bool,
    env_e164_list,
    env_file,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false")
    SECRET_KEY = "dev-only-insecure-key-callpull-do-not-use-in-production"

PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", "http://127.0.0.1:8000", schemes=("http", "https"))
_public_host = urlsplit(PUBLIC_BASE_URL).hostname
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", sorted({"127.0.0.1", "localhost", "[::1]", _public_host}))

# Transport security. Defaults follow PUBLIC_BASE_URL: served over https (and not DEBUG) means
# HSTS, an http→https redirect and secure cookies; each can be set on its own.
_served_over_https = urlsplit(PUBLIC_BASE_URL).scheme == "https" and not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _served_over_https else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a commitment for the whole domain, which only its owner can make (hstspreload.org):
# off unless asked for, and then Django's reminder about it (security.W021) is silenced.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _served_over_https)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", _served_over_https)
SESSION_COOKIE_HTTPONLY = True
# Behind a TLS-terminating proxy, trust its X-Forwarded-Proto only when told to (a client could
# send the header itself when there is no proxy): SECURE_PROXY_SSL_HEADER=true.
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# Origins a browser WebSocket may come from. Same-origin pages are always allowed.
WEBSOCKET_ALLOWED_ORIGINS = env_list("WEBSOCKET_ALLOWED_ORIGINS", [])

# Reverse proxies (IP addresses or CIDR networks) whose X-Forwarded-For is believed: the
# client's address is the right-most one in that header not in this list, and only when
# the request came from one of them. Empty: the peer's own address, always.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network") from None

# Hosts a device's `sip:` connect target may be on (the operator's PBX or SIP trunk
# domains), exact and case-insensitive. Empty: no SIP targets at all.
SIP_DOMAINS = [domain.lower().rstrip(".") for domain in env_list("SIP_DOMAINS", [])]

ALLOW_SIGNUP = env_bool("ALLOW_SIGNUP", True)
SERVER_NUMBERS = env_e164_list("SERVER_NUMBERS", ["+15555550100"])

# Voice provider: Twilio (or any TwiML provider) when credentials are set. Without them
# (the embedded default, DEBUG only) the server runs the development entry point
# (ASGI_APPLICATION below), which mounts the bundled carrier/provider simulator at
# /simulator/; the product talks to it over real HTTP with a development account that
# is no secret (like the development SECRET_KEY above).
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
if bool(TWILIO_ACCOUNT_SID) != bool(TWILIO_AUTH_TOKEN):
    raise ImproperlyConfigured("Set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither")
SIMULATOR_ENABLED = TWILIO_ACCOUNT_SID is None
if SIMULATOR_ENABLED:
    if not DEBUG:
        raise ImproperlyConfigured("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required when DEBUG is false")
    TWILIO_ACCOUNT_SID = "AC" + "5" * 32
    TWILIO_AUTH_TOKEN = "simulator-auth-token"
TWILIO_API_BASE = env_url("TWILIO_API_BASE", PUBLIC_BASE_URL + "/simulator" if SIMULATOR_ENABLED
                          else "https://api.twilio.com", schemes=("http", "https"))

# Voice access tokens (POST /api/v1/devices/me/voice-token, callpull/voice.py): a voice SDK
# registers its device's `client` identity with a Twilio Access Token signed with an API key's
# secret (https://www.twilio.com/docs/iam/access-tokens). Without the key no tokens are minted
# (503 voice_tokens_not_configured). The embedded default has a development key the bundled
# simulator also knows (no secret, like the development account above).
TWILIO_API_KEY_SID = env_str("TWILIO_API_KEY_SID")
TWILIO_API_KEY_SECRET = env_str("TWILIO_API_KEY_SECRET")
if bool(TWILIO_API_KEY_SID) != bool(TWILIO_API_KEY_SECRET):
    raise ImproperlyConfigured("Set both TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET, or neither")
if SIMULATOR_ENABLED and TWILIO_API_KEY_SID is None:
    TWILIO_API_KEY_SID = "SK" + "5" * 32
    TWILIO_API_KEY_SECRET = "simulator-development-api-key-secret"
# The push credentials (CR…) the voice SDK's own incoming-call push uses, per platform; and
# the TwiML application (AP…) of outgoing calls, when the apps make any. All optional.
TWILIO_PUSH_CREDENTIAL_SID_ANDROID = env_str("TWILIO_PUSH_CREDENTIAL_SID_ANDROID")
TWILIO_PUSH_CREDENTIAL_SID_IOS = env_str("TWILIO_PUSH_CREDENTIAL_SID_IOS")
TWILIO_TWIML_APP_SID = env_str("TWILIO_TWIML_APP_SID")
# How long an access token lives; Twilio accepts at most 24 hours (error 20157).
VOICE_TOKEN_TTL_SECONDS = env_int("VOICE_TOKEN_TTL_SECONDS", 3600, minimum=1)
if VOICE_TOKEN_TTL_SECONDS > 86400:
    raise ImproperlyConfigured(f"VOICE_TOKEN_TTL_SECONDS={VOICE_TOKEN_TTL_SECONDS} is over 86400 (24 hours), "
                               "the longest an access token may live")

# /metrics (callpull.metrics): Prometheus' text format, readable only with
# `Authorization: Bearer <METRICS_TOKEN>`. Unset, the endpoint is off (404). Call volumes are
# business data: a long random token, sent only over TLS.
METRICS_TOKEN = env_str("METRICS_TOKEN")
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters")

FCM_CREDENTIALS_FILE = env_file("FCM_CREDENTIALS_FILE")
FCM_ENDPOINT = env_url("FCM_ENDPOINT", "https://fcm.googleapis.com", schemes=("http", "https"))
# One FCM HTTP request may take this long; a push is retried (quota, 5xx, timeouts) only
# within FCM_RETRY_BUDGET_SECONDS and never past the call's ring window: a push that
# arrives after the ring is worthless.
FCM_HTTP_TIMEOUT_SECONDS = env_float("FCM_HTTP_TIMEOUT_SECONDS", 3.0, minimum=0.1)
FCM_RETRY_BUDGET_SECONDS = env_float("FCM_RETRY_BUDGET_SECONDS", 4.0, minimum=0.0)

# APNs (notifications.apns): token-based authentication with the .p8 signing key of the
# Apple developer account. All five or none: APNs is off without them.
APNS_KEY_FILE = env_file("APNS_KEY_FILE")
APNS_KEY_ID = env_str("APNS_KEY_ID")
APNS_TEAM_ID = env_str("APNS_TEAM_ID")
APNS_BUNDLE_ID = env_str("APNS_BUNDLE_ID")
APNS_ENDPOINT = env_url("APNS_ENDPOINT", None, schemes=("http", "https"))
_apns = {"APNS_KEY_FILE": APNS_KEY_FILE, "APNS_KEY_ID": APNS_KEY_ID, "APNS_TEAM_ID": APNS_TEAM_ID,
         "APNS_BUNDLE_ID": APNS_BUNDLE_ID, "APNS_ENDPOINT": APNS_ENDPOINT}
if any(_apns.values()) and not all(_apns.values()):
    raise ImproperlyConfigured("Set all of " + ", ".join(_apns) + " or none; missing: "
                               + ", ".join(name for name, value in _apns.items() if not value))
APNS_HTTP_TIMEOUT_SECONDS = env_float("APNS_HTTP_TIMEOUT_SECONDS", 3.0, minimum=0.1)
# A PEM bundle of the CAs that verify an https APNS_ENDPOINT (a local APNs server's own CA);
# unset: the system's CAs (Apple's servers).
APNS_CA_FILE = env_file("APNS_CA_FILE")

REDIS_URL = env_url("REDIS_URL", None, schemes=("redis", "rediss", "unix"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "devices",
    "notifications",
    "callpull",
]
if SIMULATOR_ENABLED:
    # The stand-ins' management commands (`manage.py simulator`, `manage.py fakefcm`).
    INSTALLED_APPS.append("simulators")

MIDDLEWARE = [
    # Outermost: any error Django itself answers under /api/ (a bad Host, a CSRF refusal, its
    # debug pages) leaves in the API's error envelope (callpull/api/errors.py).
    "callpull.api.errors.ApiErrorEnvelopeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "callpull.urls"
# The product alone, or (embedded default) the development entry point: the product with the
# simulator mounted at /simulator/. `manage.py serve` serves this one.
ASGI_APPLICATION = "simulators.asgi.application" if SIMULATOR_ENABLED else "callpull.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_default_db = f"sqlite:///{BASE_DIR / 'callpull.sqlite3'}"
_database_url = env_str("DATABASE_URL", _default_db)
if urlsplit(_database_url).scheme not in {"sqlite", "postgres", "postgresql", "pgsql"}:
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {urlsplit(_database_url).scheme!r} is not supported "
        "(use sqlite:// or postgres://)"
    )
DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Each request gives its connection back when it ends, and consumer database calls
    # run in threads that come and go: without a pool each request and each consumer
    # database call would open a connection (a few ms, most of a ring report's time).
    # Django has the pool check a connection as it lends it, so one the database
    # dropped (a restart, a blip) is replaced instead of failing the request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 2, minimum=0),
        "max_size": env_int("DATABASE_POOL_MAX", 20, minimum=1),
        "timeout": env_float("DATABASE_POOL_TIMEOUT_SECONDS", 2.0, minimum=0.1),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Persistent connections (each pool thread of callpull/http.py, the WebSocket side's database
    # thread): no connection per request, and no last close checkpointing and deleting the log.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    # WAL and a busy timeout let the sweeper, HTTP and WebSocket threads share the file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # (The tests' database is named by tests/conftest.py: a file, not shared-cache memory.)

# Web Push (notifications.webpush) to browsers' push services, signed with VAPID (RFC 8292).
# VAPID_PRIVATE_KEY_FILE: a PEM EC P-256 private key; VAPID_SUBJECT: a mailto: or https: contact
# the push services may use (both, or neither: Web Push is off). In the embedded default (the
# simulator on, no key given) a key is generated on first use and kept next to the SQLite
# database (`<database>.vapid.pem`, out of git), so browsers' subscriptions survive restarts.
VAPID_PRIVATE_KEY_FILE = env_file("VAPID_PRIVATE_KEY_FILE")
VAPID_SUBJECT = env_str("VAPID_SUBJECT")
if VAPID_SUBJECT is not None and not VAPID_SUBJECT.startswith(("mailto:", "https://")):
    raise ImproperlyConfigured("VAPID_SUBJECT must be a mailto: or https: URL (RFC 8292 section 2.1)")
if bool(VAPID_PRIVATE_KEY_FILE) != bool(VAPID_SUBJECT) and not SIMULATOR_ENABLED:
    raise ImproperlyConfigured("Set both VAPID_PRIVATE_KEY_FILE and VAPID_SUBJECT, or neither")
VAPID_KEY_GENERATED = False
if VAPID_PRIVATE_KEY_FILE is None and SIMULATOR_ENABLED:
    _database_name = str(DATABASES["default"].get("NAME") or "")
    _on_file = DATABASES["default"]["ENGINE"].endswith("sqlite3") and _database_name not in ("", ":memory:")
    VAPID_PRIVATE_KEY_FILE = f"{_database_name}.vapid.pem" if _on_file else str(BASE_DIR / "callpull.vapid.pem")
    VAPID_KEY_GENERATED = True
if VAPID_SUBJECT is None and SIMULATOR_ENABLED:
    VAPID_SUBJECT = "mailto:callpull-development@example.invalid"
WEBPUSH_ENABLED = VAPID_PRIVATE_KEY_FILE is not None
# Where a subscription's endpoint may point (devices.webpush): host suffixes of the browser
# vendors' push services over https; an entry with a port (host:port) is that origin exactly,
# http allowed (a local push service). The embedded default adds the simulator's own origins.
_WEBPUSH_VENDORS = ["fcm.googleapis.com", "updates.push.services.mozilla.com", "push.services.mozilla.com",
                    "web.push.apple.com", "notify.windows.com"]
if SIMULATOR_ENABLED:
    for _url in (PUBLIC_BASE_URL, TWILIO_API_BASE):
        _parts = urlsplit(_url)
        _WEBPUSH_VENDORS.append(f"{_parts.hostname}:{_parts.port or (443 if _parts.scheme == 'https' else 80)}")
WEBPUSH_PUSH_SERVICES = env_list("WEBPUSH_PUSH_SERVICES", list(dict.fromkeys(_WEBPUSH_VENDORS)))
# One request to a push service may take this long; a push is retried (429, 5xx) only within
# the ring window.
WEBPUSH_HTTP_TIMEOUT_SECONDS = env_float("WEBPUSH_HTTP_TIMEOUT_SECONDS", 3.0, minimum=0.1)

# The API and the pages run on a thread pool (callpull/http.py), one thread per request from
# start to end. A ring report with policy immediate holds its thread while it waits up to
# RING_ACK_WAIT_SECONDS for a receipt (50 reports/s x 0.5 s = 25 threads if none came); busy
# threads make requests queue. Threads start only as requests overlap.
HTTP_THREADS = env_int("HTTP_THREADS", 32, minimum=1)

# The provider's webhooks run on a pool of their own (callpull/telephony/asgi.py). SQLite has one
# writer, so more threads would only wait on each other's locks; PostgreSQL overlaps their queries.
WEBHOOK_THREADS = env_int("WEBHOOK_THREADS", 1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 4,
                          minimum=1)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Our Redis layer: the ASGI channel layer spec on redis-py (notifications/layers.py).
            "BACKEND": "notifications.layers.RedisChannelLayer",
            # It waits for messages with blocking 5 s BLPOPs; redis-py >= 6 puts a 5 s socket
            # timeout on every read, which would cut them at the edge. Blocking reads get none.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}], "capacity": 1000,
                       "expiry": 30},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "callpull",
        }
    }
else:
    # Our in-memory layer, one process (notifications/layers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "notifications.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Request bodies (API and webhooks alike) larger than this are refused with 413 while they
# arrive, chunked or not, before more than this is stored (callpull/http.py). Django's own
# check of a declared Content-Length uses the same number.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BODY_BYTES", 1024 * 1024, minimum=1024)
# JSON bodies nested deeper than this are refused with 400 json_too_deep (no API body needs
# more than a few levels; Python's parser recurses on each level).
API_JSON_MAX_DEPTH = env_int("API_JSON_MAX_DEPTH", 32, minimum=2)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["devices.auth.DeviceTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["devices.auth.IsDevice"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser with a nesting limit (API_JSON_MAX_DEPTH), callpull/api/parsers.py.
    "DEFAULT_PARSER_CLASSES": ["callpull.api.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "callpull.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "callpull API",
    "DESCRIPTION": "Take your mobile calls on whatever device is at hand.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs are public: a stale token in the header must not turn them into a 401.
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "devices.schema.add_error_responses"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Attempts allowed per window (count, seconds) before a 429 with Retry-After.
RATE_LIMITS = {
    # Wrong passwords per username and client address (logins), and per user and device
    # (the password or PIN a sensitive change asks for again).
    "login_failure": (env_int("RATE_LIMIT_LOGIN", 5, minimum=1), 300),
    # Wrong passwords from one client address, whatever the username.
    "login_failure_address": (env_int("RATE_LIMIT_LOGIN_ADDRESS", 20, minimum=1), 300),
    "pairing_failure": (env_int("RATE_LIMIT_PAIRING", 10, minimum=1), 300),
    "signup": (env_int("RATE_LIMIT_SIGNUP", 20, minimum=1), 3600),
    "ws_ticket": (env_int("RATE_LIMIT_WS_TICKET", 30, minimum=1), 60),
    "transfer_pin": (env_int("RATE_LIMIT_TRANSFER_PIN", 5, minimum=1), 900),
    # Wrong transfer PINs of an account per day, whichever device guessed (transfers and the
    # PIN given for a sensitive change): new devices do not bring new guesses.
    "pin_failure_user": (env_int("RATE_LIMIT_PIN_PER_ACCOUNT", 50, minimum=1), 86400),
    # Pairing codes an account may create per hour (each makes a new device).
    "pairing_code": (env_int("RATE_LIMIT_PAIRING_CODE", 10, minimum=1), 3600),
    # Wrong PINs of callers dialling in, per calling number and per account (docs/MOVING.md).
    "dial_in_pin": (env_int("RATE_LIMIT_DIAL_IN_PIN", 5, minimum=1), 900),
    # Number verification calls cost money (toll fraud): per device per hour, and per user
    # and per called number per day.
    "number_verification": (env_int("RATE_LIMIT_NUMBER_VERIFICATION", 3, minimum=1), 3600),
    "number_verification_daily": (env_int("RATE_LIMIT_NUMBER_VERIFICATION_DAILY", 10, minimum=1), 86400),
    # Voice access tokens a device may fetch per hour (an SDK fetches one per registration and
    # refreshes it before it expires).
    "voice_token": (env_int("RATE_LIMIT_VOICE_TOKEN", 30, minimum=1), 3600),
}

PAIRING_CODE_TTL_SECONDS = env_int("PAIRING_CODE_TTL_SECONDS", 300, minimum=30)
WS_TICKET_TTL_SECONDS = env_int("WS_TICKET_TTL_SECONDS", 30, minimum=5)
# How long the code read out by a number-verification call stays good (callpull/verification.py).
NUMBER_VERIFICATION_TTL_SECONDS = env_int("NUMBER_VERIFICATION_TTL_SECONDS", 600, minimum=60)
# A worker refreshes its connections this often; a connection not refreshed for
# PRESENCE_STALE_SECONDS belongs to a dead worker and no longer counts as online.
PRESENCE_HEARTBEAT_SECONDS = env_int("PRESENCE_HEARTBEAT_SECONDS", 20, minimum=1)
PRESENCE_STALE_SECONDS = env_int("PRESENCE_STALE_SECONDS", 60, minimum=2)
if PRESENCE_STALE_SECONDS <= PRESENCE_HEARTBEAT_SECONDS:
    # A live worker refreshes its rows once a heartbeat: rows it has not refreshed yet would
    # look stale, and its devices offline, between two of its own beats.
    raise ImproperlyConfigured(f"PRESENCE_STALE_SECONDS={PRESENCE_STALE_SECONDS} must be more than "
                               f"PRESENCE_HEARTBEAT_SECONDS={PRESENCE_HEARTBEAT_SECONDS} (defaults 60 and 20)")

# The call's clock. Carriers forward on no-reply after 20 s by default (5-30 s), so the
# ring window outlasts that; the wait for the forwarded call covers a push to the
# handset, its reject and the carrier's forwarding.
CALL_RING_SECONDS = env_int("CALL_RING_SECONDS", 45, minimum=5)
CALL_FORWARD_WAIT_SECONDS = env_int("CALL_FORWARD_WAIT_SECONDS", 20, minimum=2)
# "Reached" means a secondary acknowledged the `call.ringing` frame (or FCM accepted a
# push). With policy `immediate` the ring report waits at most this long for the first
# ack before answering; without one it answers keep_ringing/awaiting_delivery and the
# reject reaches the handset over WebSocket and FCM when the first ack comes. 0: never wait.
RING_ACK_WAIT_SECONDS = env_float("RING_ACK_WAIT_SECONDS", 0.5, minimum=0)
# A forwarded call matches a ring report at most this old.
CALL_MATCH_WINDOW_SECONDS = env_int("CALL_MATCH_WINDOW_SECONDS", 120, minimum=10)
# A connected call has no deadline; one not heard from for this long is checked against
# the provider's REST API (and again every this long), so a lost `completed` callback
# cannot leave it connected for ever.
CALL_RECONCILE_SECONDS = env_int("CALL_RECONCILE_SECONDS", 60, minimum=5)
# How long the provider rings the chosen device before giving up.
DIAL_TIMEOUT_SECONDS = env_int("DIAL_TIMEOUT_SECONDS", 25, minimum=5)
# How long the holding device has to approve a pull before it counts as denied.
PULL_APPROVAL_SECONDS = env_int("PULL_APPROVAL_SECONDS", 20, minimum=2)
# When the device holding a call is revoked, the caller waits on hold this long for
# another device of the user to pull the call; then the call ends (fallback or goodbye).
HOLDER_LOST_HOLD_SECONDS = env_int("HOLDER_LOST_HOLD_SECONDS", 60, minimum=5)
# A provider request that failed for a while (no answer, HTTP 5xx or 429) is tried again
# after this long, then twice as long each time, while the next try starts
# within PROVIDER_RETRY_SECONDS of the first (a dial: within DIAL_TIMEOUT_SECONDS).
PROVIDER_RETRY_BACKOFF_SECONDS = env_float("PROVIDER_RETRY_BACKOFF_SECONDS", 0.5, minimum=0.05)
PROVIDER_RETRY_SECONDS = env_float("PROVIDER_RETRY_SECONDS", 10.0, minimum=0)
# The sweeper ends calls whose deadline passed. In-process for the embedded default;
# with several workers run `manage.py sweep` once and set SWEEPER_IN_PROCESS=false.
SWEEPER_IN_PROCESS = env_bool("SWEEPER_IN_PROCESS", True)
SWEEP_INTERVAL_SECONDS = env_float("SWEEP_INTERVAL_SECONDS", 1.0, minimum=0.05)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        **{name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
           for name in ("callpull", "devices", "notifications")},
        # Django's own default sends "django" to a console handler of its own (with DEBUG) and
        # on to the root's: each django.request line came out twice. One handler, always.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
