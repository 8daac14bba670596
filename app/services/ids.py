"""Identifiers."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0


def new_id() -> str:
    return uuid.uuid4().hex


def time_ordered_id() -> str:
    """32 hex chars: 16 of monotonic nanoseconds + 16 random. Sorts by creation time within a process."""
    global _last
    with _lock:
        now = max(time.time_ns(), _last + 1)
        _last = now
    return f"{now:016x}{os.urandom(8).hex()}"
