"""Shared helper for the Python end-to-end tests (docker compose, Prometheus)."""

import time


def wait_for(what, fn, timeout_s, interval=0.5):
    """Polls fn() until it returns something truthy and returns that value.

    Exceptions from fn() count as "not ready yet" (a server still starting); the last one is
    named in the AssertionError raised after timeout_s, so a failure says what was seen.
    """
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last})")
