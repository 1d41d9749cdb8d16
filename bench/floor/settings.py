"""Django settings of the floor app: only what Channels needs, with Channels' stock
layers (in-memory, or channels_redis on REDIS_URL): what a bare Channels app would run.
callpull runs its own layers (notifications/layers.py) on the same services."""
import os

SECRET_KEY = "bench-floor"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES = {}
USE_TZ = True
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                  "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                                             "capacity": 1000, "expiry": 30}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
