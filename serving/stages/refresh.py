"""Re-publish gauges on a timer: Ray's metrics agent drops series that stop being recorded, and
an idle replica must still report its queue (0) and its configuration."""

from __future__ import annotations

import threading
from collections.abc import Callable


def keep_publishing(publish: Callable[[], None], interval_s: float = 5.0) -> threading.Event:
    """Call `publish` now and every `interval_s` in a daemon thread; set the event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            publish()
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="metrics-refresh", daemon=True).start()
    return stop
