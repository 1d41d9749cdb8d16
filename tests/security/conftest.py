"""The ring-flow fixtures (fake provider, fresh channel layer, an active line, online sockets) apply here too."""

from tests.callpull.conftest import _fresh_channel_layer, fake_provider, line, live_call, online, tablet  # noqa: F401
from tests.callpull.test_verification import phone, placed  # noqa: F401 (the number-verification fixtures)
