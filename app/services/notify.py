"""Model-change notices between processes.

Full mode: Redis pub/sub, so every API process drops a site's cached model the
moment another process (usually a worker) activates a version. Embedded mode:
the notice stays in-process. Either way the model cache also polls the
database every few seconds, so a missed notice only delays pick-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CHANNEL = "siteloc:model-activated"
Listener = Callable[[str], None]


class LocalNotifier:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def publish(self, site_id: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(site_id)
            except Exception:  # a listener's failure must not undo an activation
                log.exception("model-change listener failed")

    def close(self) -> None:
        self._listeners.clear()


class RedisNotifier(LocalNotifier):
    def __init__(self, url: str) -> None:
        super().__init__()
        import redis

        self._redis = redis.Redis.from_url(url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, site_id: str) -> None:
        super().publish(site_id)
        try:
            self._redis.publish(CHANNEL, site_id)
        except Exception:  # the database poll picks the change up anyway
            log.warning("could not publish model change for site %s to Redis", site_id, exc_info=True)

    def subscribe(self, fn: Listener) -> None:
        super().subscribe(fn)
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="siteloc-notice", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "message":
                        site_id = msg["data"].decode() if isinstance(msg["data"], bytes) else str(msg["data"])
                        LocalNotifier.publish(self, site_id)
                pubsub.close()
            except Exception:
                log.warning("Redis notice listener lost its connection; retrying", exc_info=True)
                self._stop.wait(2.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        self._redis.close()
        super().close()


def make_notifier(redis_url: str | None) -> LocalNotifier:
    return RedisNotifier(redis_url) if redis_url else LocalNotifier()
