"""Each log line once: no logger of ours or Django's reaches two console handlers."""

import logging

import pytest


def handlers_reached(name: str) -> list[logging.Handler]:
    """The handlers a WARNING record on logger `name` goes through (propagation followed)."""
    reached, logger = [], logging.getLogger(name)
    while logger is not None:
        reached += [handler for handler in logger.handlers if handler.level <= logging.WARNING]
        logger = logger.parent if logger.propagate else None
    return reached


@pytest.mark.parametrize("name", ["django.request", "django.security.DisallowedHost", "callpull", "devices.services",
                                  "notifications.fanout", "callpull.telephony.views"])
def test_a_warning_is_written_by_one_stream_handler(name):
    # exactly StreamHandler: pytest hangs capture handlers (FileHandler and others) on loggers too
    streams = [h for h in handlers_reached(name) if type(h) is logging.StreamHandler]
    assert len(streams) == 1, f"{name} reaches {streams}"
