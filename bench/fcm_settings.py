"""Throwaway settings for the FCM benchmark: callpull's settings plus fcm_django, on a
SQLite file of the benchmark's own (BENCH_FCM_DB)."""
import os

from callpull.settings import *  # noqa: F403
from callpull.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "fcm_django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_FCM_DB"]}}
FCM_DJANGO_SETTINGS = {"ONE_DEVICE_PER_USER": False, "DELETE_INACTIVE_DEVICES": False}
