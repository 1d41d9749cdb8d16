"""Throwaway settings for the APNs benchmark: callpull's settings plus django-push-notifications
(its APNs path on aioapns), on a SQLite file of the benchmark's own (BENCH_APNS_DB), with the
token authentication its README documents: the same .p8 key, key id, team and VoIP topic as
ours (APNS_* from the environment, as bench/run.py sets them for the local APNs server)."""
import os

from callpull.settings import *  # noqa: F403
from callpull.settings import APNS_BUNDLE_ID, APNS_KEY_FILE, APNS_KEY_ID, APNS_TEAM_ID, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "push_notifications"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_APNS_DB"]}}
PUSH_NOTIFICATIONS_SETTINGS = {
    "APNS_AUTH_KEY_PATH": str(APNS_KEY_FILE),
    "APNS_AUTH_KEY_ID": APNS_KEY_ID,
    "APNS_TEAM_ID": APNS_TEAM_ID,
    "APNS_TOPIC": f"{APNS_BUNDLE_ID}.voip",  # PushKit's topic: call.ringing is a VoIP push
    "APNS_USE_SANDBOX": False,               # api.push.apple.com, which bench/apnsbench.py points at the fake
}
